"""Reading back the stored pseudo-labels: filtered pages and a streaming export."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from app.api.deps import ADMIN, StoreDep
from app.api.errors import Invalid
from app.api.schemas import MAX_ROW_ID, MAX_VERSION, PseudoLabelPage, StoredPseudoLabel
from app.core.label_export import csv_chunk, exported_row
from app.core.texts import storable
from app.store.database import Store
from app.store.pseudo_labels import export_rows, list_pseudo_labels

router = APIRouter(tags=["labels"], dependencies=ADMIN)

# Rows per database round trip of the export: what the server holds at once.
EXPORT_PAGE = 5000


class _Filters:
    def __init__(
        self,
        label: str | None = None,
        model_version: Annotated[
            int | None, Query(ge=1, le=MAX_VERSION, description="Made by this model version.")
        ] = None,
        min_confidence: Annotated[
            float | None, Query(ge=0, le=1, description="Confidence at least this (0..1).")
        ] = None,
        max_confidence: Annotated[
            float | None, Query(ge=0, le=1, description="Confidence at most this (0..1).")
        ] = None,
        since: Annotated[
            datetime | None,
            Query(description="Stored at or after this ISO 8601 time (no offset: UTC)."),
        ] = None,
        until: Annotated[
            datetime | None,
            Query(description="Stored before this ISO 8601 time (no offset: UTC)."),
        ] = None,
    ) -> None:
        if (
            min_confidence is not None
            and max_confidence is not None
            and min_confidence > max_confidence
        ):
            raise Invalid(
                f"min_confidence ({min_confidence}) is above max_confidence ({max_confidence})"
            )
        if label is not None:
            try:
                storable(label, "label")  # PostgreSQL cannot compare with a NUL
            except ValueError as exc:
                raise Invalid(str(exc)) from None
        since, until = _utc(since, "since"), _utc(until, "until")
        if since is not None and until is not None and since >= until:
            raise Invalid(f"since ({since.isoformat()}) must be before until ({until.isoformat()})")
        self.values: dict[str, Any] = {
            "label": label,
            "model_version": model_version,
            "min_confidence": min_confidence,
            "max_confidence": max_confidence,
            "since": since,
            "until": until,
        }


def _utc(moment: datetime | None, name: str = "time") -> datetime | None:
    # A time without an offset means UTC, the zone every row is stored in.
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise Invalid(f"{name} is out of range once converted to UTC") from None


FiltersDep = Annotated[_Filters, Depends()]


@router.get("/labels", response_model=PseudoLabelPage)
def labels_page(
    store: StoreDep,
    filters: FiltersDep,
    after_id: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> PseudoLabelPage:
    """A page of stored pseudo-labels in id order, filtered."""
    with store.session() as session:
        rows = list_pseudo_labels(session, after_id=after_id, limit=limit, **filters.values)
        items = [StoredPseudoLabel.model_validate(r) for r in rows]
    return PseudoLabelPage(items=items, next_after_id=items[-1].id if len(items) == limit else None)


@router.get(
    "/labels/export",
    responses={
        200: {
            "description": "JSON lines (`format=jsonl`) or CSV with a header row (`format=csv`).",
            "content": {"application/x-ndjson": {}, "text/csv": {}},
        }
    },
)
def labels_export(
    store: StoreDep,
    filters: FiltersDep,
    format: Annotated[
        Literal["jsonl", "csv"], Query(description="`jsonl` (default) or `csv`.")
    ] = "jsonl",
) -> StreamingResponse:
    """Every matching pseudo-label in id order, streamed page by page (constant memory)."""
    pages = _export_pages(store, filters.values)
    if format == "csv":
        body: Iterator[str] = (csv_chunk(page, header=first) for first, page in _mark_first(pages))
        media_type = "text/csv; charset=utf-8"
    else:
        body = (
            "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in page) for page in pages
        )
        media_type = "application/x-ndjson"
    return StreamingResponse(
        body,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="pseudo_labels.{format}"'},
    )


def _export_pages(store: Store, filters: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
    """Pages of exported rows as JSON-ready dicts, by keyset on id (no OFFSET scans)."""
    after_id = 0
    while True:
        with store.session() as session:
            page = [
                exported_row(row)
                for row in export_rows(session, after_id=after_id, limit=EXPORT_PAGE, **filters)
            ]
        if not page:
            return
        yield page
        after_id = page[-1]["id"]


def _mark_first(
    pages: Iterator[list[dict[str, Any]]],
) -> Iterator[tuple[bool, list[dict[str, Any]]]]:
    """(is_first, page) pairs; an export with no row still yields one empty page, so a CSV
    always has its header row."""
    first = True
    for page in pages:
        yield first, page
        first = False
    if first:
        yield True, []
