"""Stored predictions: what /label answered, kept as pre-training data."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, Select, func, insert, select
from sqlalchemy.orm import Session

from app.store.tables import GoldExample, PseudoLabel, utcnow


@dataclass(frozen=True)
class Prediction:
    text: str
    label: str
    confidence: float
    logits: list[float]
    model_version: int


def add_predictions(session: Session, predictions: Sequence[Prediction]) -> list[PseudoLabel]:
    """Insert predictions; the returned rows carry their new ids."""
    rows = [
        PseudoLabel(
            text=p.text,
            label=p.label,
            confidence=p.confidence,
            logits=p.logits,
            model_version=p.model_version,
        )
        for p in predictions
    ]
    session.add_all(rows)
    session.flush()
    return rows


def insert_predictions(conn: Session | Connection, predictions: Sequence[Prediction]) -> list[int]:
    """Insert predictions with one INSERT ... RETURNING; their new ids, in order.

    What the API's store writer uses, on a plain connection (app.store.database
    Store.transaction): it needs the ids only, and skipping the ORM's session and unit of
    work shortens the commit every /label answer waits for (measured: docs/benchmarks.md,
    "The store writer's commit").
    """
    if not predictions:
        return []
    now = utcnow()
    rows = [
        {
            "text": p.text,
            "label": p.label,
            "confidence": p.confidence,
            "logits": p.logits,
            "model_version": p.model_version,
            "created_at": now,
        }
        for p in predictions
    ]
    if len(rows) == 1:  # the common /label case: a single-row statement, no executemany
        return [conn.execute(_INSERT_ONE, rows[0]).scalar_one()]
    return list(conn.execute(_INSERT_MANY, rows).scalars())


_INSERT_ONE = insert(PseudoLabel).returning(PseudoLabel.id)
_INSERT_MANY = insert(PseudoLabel).returning(PseudoLabel.id, sort_by_parameter_order=True)


def _filtered(
    query: Select[Any],
    *,
    after_id: int,
    upto_id: int | None = None,
    label: str | None = None,
    model_version: int | None = None,
    min_confidence: float | None = None,
    max_confidence: float | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Select[Any]:
    query = query.where(PseudoLabel.id > after_id)
    if upto_id is not None:
        query = query.where(PseudoLabel.id <= upto_id)
    if label is not None:
        query = query.where(PseudoLabel.label == label)
    if model_version is not None:
        query = query.where(PseudoLabel.model_version == model_version)
    if min_confidence is not None:
        query = query.where(PseudoLabel.confidence >= min_confidence)
    if max_confidence is not None:
        query = query.where(PseudoLabel.confidence <= max_confidence)
    if since is not None:
        query = query.where(PseudoLabel.created_at >= since)
    if until is not None:
        query = query.where(PseudoLabel.created_at < until)
    return query.order_by(PseudoLabel.id)


def list_pseudo_labels(
    session: Session, *, after_id: int = 0, limit: int = 100, **filters: Any
) -> list[PseudoLabel]:
    """A page in id order; pass the last id seen as `after_id` for the next page. Filters:
    label, model_version, min_confidence, max_confidence, since, until."""
    query = _filtered(select(PseudoLabel), after_id=after_id, **filters)
    return list(session.scalars(query.limit(limit)))


EXPORTED_COLUMNS = (
    PseudoLabel.id,
    PseudoLabel.text,
    PseudoLabel.label,
    PseudoLabel.confidence,
    PseudoLabel.logits,
    PseudoLabel.model_version,
    PseudoLabel.created_at,
)


def export_rows(
    session: Session, *, after_id: int = 0, limit: int = 5000, **filters: Any
) -> list[Row[Any]]:
    """`list_pseudo_labels` as plain column tuples (in EXPORTED_COLUMNS order): the export
    streams millions of rows, and building no ORM object per row triples its speed."""
    query = _filtered(select(*EXPORTED_COLUMNS), after_id=after_id, **filters)
    return list(session.execute(query.limit(limit)))


def max_id(session: Session) -> int:
    return session.scalar(select(func.max(PseudoLabel.id))) or 0


def count_after(session: Session, after_id: int) -> int:
    query = select(func.count()).select_from(PseudoLabel).where(PseudoLabel.id > after_id)
    return session.scalar(query) or 0


def rows_after(session: Session, after_id: int, limit: int) -> list[Row[tuple[int, str]]]:
    """(id, text) of the oldest `limit` stored predictions after `after_id`, oldest first."""
    query = (
        select(PseudoLabel.id, PseudoLabel.text)
        .where(PseudoLabel.id > after_id)
        .order_by(PseudoLabel.id)
        .limit(limit)
    )
    return list(session.execute(query))


def stored_upto(session: Session, texts: Sequence[str], upto_id: int) -> set[str]:
    """Which of `texts` have a stored prediction with id <= `upto_id`. Texts are not
    indexed: this reads the table once per chunk, for the rare caller that must know
    (a waiting candidate's new traffic, once per batch)."""
    found: set[str] = set()
    wanted = sorted(set(texts))
    for start in range(0, len(wanted), 1000):
        chunk = wanted[start : start + 1000]
        query = select(PseudoLabel.text).where(
            PseudoLabel.id <= upto_id, PseudoLabel.text.in_(chunk)
        )
        found.update(session.scalars(query.distinct()))
    return found


def pool_pages(
    session: Session,
    *,
    upto_id: int,
    above_id: int,
    versions: Sequence[int],
    min_confidence: float | None = None,
    max_confidence: float | None = None,
    page_size: int = 2_000,
) -> Iterator[list[Row[tuple[int, str, str, list[float]]]]]:
    """The pre-training pool's candidates, newest first, a page at a time: (id, text, label,
    logits) of predictions with `above_id` < id <= `upto_id` made by models of `versions`.

    Keyset pages walk the primary key downwards, so a page costs the same at any depth of a
    store of any size, and the caller holds one page at a time, never the store."""
    if not versions:
        return
    cursor = upto_id + 1
    while True:
        query = select(
            PseudoLabel.id, PseudoLabel.text, PseudoLabel.label, PseudoLabel.logits
        ).where(
            PseudoLabel.id < cursor,
            PseudoLabel.id > above_id,
            PseudoLabel.model_version.in_(list(versions)),
        )
        if min_confidence is not None:
            query = query.where(PseudoLabel.confidence >= min_confidence)
        if max_confidence is not None:
            query = query.where(PseudoLabel.confidence <= max_confidence)
        page = list(session.execute(query.order_by(PseudoLabel.id.desc()).limit(page_size)))
        if not page:
            return
        yield page
        if len(page) < page_size:
            return
        cursor = page[-1].id


def texts_like_served(session: Session, count: int = 256) -> list[str]:
    """Up to `count` texts like those an API process will serve, for measuring its
    micro-batch bounds: the newest stored, topped up with gold where few are stored yet."""
    texts = list(
        session.scalars(select(PseudoLabel.text).order_by(PseudoLabel.id.desc()).limit(count))
    )
    if len(texts) < count // 4:
        texts += session.scalars(select(GoldExample.text).limit(count - len(texts)))
    return texts
