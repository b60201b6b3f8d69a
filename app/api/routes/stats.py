"""Aggregates of the stored pseudo-labels over time (the dashboard's traffic charts)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.api.deps import ADMIN, StoreDep
from app.api.errors import Invalid
from app.api.schemas import MAX_VERSION, UtcDatetime
from app.store import stats, versions
from app.store.database import Store

# Admin only, like /labels: the counts describe what users sent, though no text is shown.
router = APIRouter(tags=["stats"], dependencies=ADMIN)

MAX_BUCKETS = 2000
DEFAULT_SPAN = {"hour": 48, "day": 30}  # buckets shown when `since` is not given


class LabelBucketView(BaseModel):
    start: UtcDatetime = Field(description="Start of the bucket (UTC).")
    total: int
    counts: dict[str, int] = Field(description="Pseudo-labels per label.")
    mean_confidence: float


class LabelStats(BaseModel):
    bucket: stats.Bucket
    since: UtcDatetime
    until: UtcDatetime
    labels: list[str] = Field(description="The active model's labels first, then any other seen.")
    total: int
    mean_confidence: float | None
    buckets: list[LabelBucketView] = Field(description="Time order; empty buckets left out.")


def _window(
    bucket: stats.Bucket, since: datetime | None, until: datetime | None
) -> tuple[datetime, datetime]:
    width = stats.BUCKET_WIDTH[bucket]
    try:
        end = (
            stats.as_utc(until)
            if until is not None
            else stats.floor_to_bucket(datetime.now(UTC), bucket) + width
        )
        start = stats.as_utc(since) if since is not None else end - DEFAULT_SPAN[bucket] * width
    except OverflowError as exc:  # a date at the very edge of what datetime holds
        raise Invalid(f"since/until out of range: {exc}") from exc
    if start >= end:
        raise Invalid("since must be before until")
    if (end - start) / width > MAX_BUCKETS:
        raise Invalid(f"more than {MAX_BUCKETS} {bucket} buckets asked for; narrow since/until")
    return start, end


def load_label_stats(
    store: Store,
    bucket: stats.Bucket = "hour",
    since: datetime | None = None,
    until: datetime | None = None,
    model_version: int | None = None,
) -> LabelStats:
    """What GET /stats/labels answers; the dashboard charts the same figures."""
    start, end = _window(bucket, since, until)
    with store.session() as session:
        rows = stats.label_buckets(
            session, bucket=bucket, since=start, until=end, model_version=model_version
        )
        active = versions.active_version(session)
        row = versions.get_version(session, active) if active is not None else None
        known = list(row.labels) if row else []
    seen = sorted({label for b in rows for label in b.counts} - set(known))
    total = sum(b.total for b in rows)
    return LabelStats(
        bucket=bucket,
        since=start,
        until=end,
        labels=known + seen,
        total=total,
        mean_confidence=sum(b.confidence_sum for b in rows) / total if total else None,
        buckets=[
            LabelBucketView(
                start=b.start, total=b.total, counts=b.counts, mean_confidence=b.mean_confidence
            )
            for b in rows
        ],
    )


@router.get("/stats/labels", response_model=LabelStats)
def label_stats(
    store: StoreDep,
    bucket: stats.Bucket = "hour",
    since: datetime | None = None,
    until: datetime | None = None,
    model_version: Annotated[int | None, Query(ge=1, le=MAX_VERSION)] = None,
) -> LabelStats:
    """Pseudo-labels per label and their mean confidence, bucketed by hour or day (UTC);
    default: the last 48 hours or 30 days."""
    return load_label_stats(store, bucket, since, until, model_version)
