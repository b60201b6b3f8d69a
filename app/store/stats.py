"""Aggregates over the stored pseudo-labels: how many of each label, and how confident the
model was, per hour or day. Counted by the database, so the cost does not grow with the
texts' length and no text ever leaves the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.store.tables import PseudoLabel

Bucket = Literal["hour", "day"]
BUCKET_WIDTH: dict[str, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
# SQLite keeps timestamps as UTC text; strftime floors them to the bucket's start.
_SQLITE_FORMAT = {"hour": "%Y-%m-%d %H:00:00", "day": "%Y-%m-%d 00:00:00"}


@dataclass
class LabelBucket:
    """The pseudo-labels created in [start, start + bucket width)."""

    start: datetime
    counts: dict[str, int] = field(default_factory=dict)
    confidence_sum: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def mean_confidence(self) -> float:
        return self.confidence_sum / self.total if self.total else 0.0


def as_utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC, as the store writes them."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def floor_to_bucket(moment: datetime, bucket: Bucket) -> datetime:
    moment = as_utc(moment).replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if bucket == "day" else moment


def _bucket_expression(session: Session, bucket: Bucket) -> Any:
    if session.get_bind().dialect.name == "sqlite":
        return func.strftime(_SQLITE_FORMAT[bucket], PseudoLabel.created_at)
    # PostgreSQL: truncate in UTC, whatever the session's time zone.
    return func.date_trunc(bucket, func.timezone("UTC", PseudoLabel.created_at))


def _parse_start(value: Any) -> datetime:
    if isinstance(value, datetime):
        return as_utc(value)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def label_buckets(
    session: Session,
    *,
    bucket: Bucket,
    since: datetime,
    until: datetime,
    model_version: int | None = None,
) -> list[LabelBucket]:
    """Buckets in time order from `since` (inclusive) to `until` (exclusive); buckets with no
    pseudo-label are left out."""
    start = _bucket_expression(session, bucket).label("start")
    query = (
        select(
            start,
            PseudoLabel.label,
            func.count().label("n"),
            func.sum(PseudoLabel.confidence).label("confidence_sum"),
        )
        # In UTC: SQLite stores (and compares) timestamps as UTC text without an offset.
        .where(PseudoLabel.created_at >= as_utc(since), PseudoLabel.created_at < as_utc(until))
        .group_by(start, PseudoLabel.label)
    )
    if model_version is not None:
        query = query.where(PseudoLabel.model_version == model_version)
    buckets: dict[datetime, LabelBucket] = {}
    for row in session.execute(query):
        moment = _parse_start(row.start)
        entry = buckets.setdefault(moment, LabelBucket(start=moment))
        entry.counts[row.label] = entry.counts.get(row.label, 0) + int(row.n)
        entry.confidence_sum += float(row.confidence_sum or 0.0)
    return [buckets[moment] for moment in sorted(buckets)]
