"""Reading back the stored pseudo-labels: filtered pages and a streaming JSONL export."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from app.api.deps import ADMIN, StoreDep
from app.api.schemas import MAX_ROW_ID, MAX_VERSION, PseudoLabelPage, StoredPseudoLabel
from app.store.database import Store
from app.store.pseudo_labels import list_pseudo_labels

router = APIRouter(tags=["labels"], dependencies=ADMIN)


class _Filters:
    def __init__(
        self,
        label: str | None = None,
        model_version: Annotated[int | None, Query(ge=1, le=MAX_VERSION)] = None,
        min_confidence: Annotated[float | None, Query(ge=0, le=1)] = None,
        max_confidence: Annotated[float | None, Query(ge=0, le=1)] = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> None:
        self.values: dict[str, Any] = {
            "label": label,
            "model_version": model_version,
            "min_confidence": min_confidence,
            "max_confidence": max_confidence,
            "since": since,
            "until": until,
        }


FiltersDep = Annotated[_Filters, Depends()]


@router.get("/labels", response_model=PseudoLabelPage)
def labels_page(
    store: StoreDep,
    filters: FiltersDep,
    after_id: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
):
    """A page of stored pseudo-labels in id order, filtered."""
    with store.session() as session:
        rows = list_pseudo_labels(session, after_id=after_id, limit=limit, **filters.values)
        items = [StoredPseudoLabel.model_validate(r) for r in rows]
    return PseudoLabelPage(items=items, next_after_id=items[-1].id if len(items) == limit else None)


@router.get("/labels/export")
def labels_export(store: StoreDep, filters: FiltersDep):
    """Every matching pseudo-label as JSON lines, streamed page by page (constant memory)."""
    return StreamingResponse(
        _export_lines(store, filters.values),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="pseudo_labels.jsonl"'},
    )


def _export_lines(store: Store, filters: dict[str, Any]) -> Iterator[str]:
    after_id = 0
    while True:
        with store.session() as session:
            rows = list_pseudo_labels(session, after_id=after_id, limit=1000, **filters)
            page = [StoredPseudoLabel.model_validate(r).model_dump(mode="json") for r in rows]
        if not page:
            return
        yield "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in page)
        after_id = page[-1]["id"]
