"""Retention of pseudo-labels: the store's side of archiving and deleting old rows.

A run covers every row with id <= its `upto_id`, the rows created before a date. The
highest `upto_id` of any run, finished or not, is the retention mark (`deleted_upto`):
a run commits its row, and so the mark, before it deletes anything, and the retraining
job reads no row below the mark, so a job never learns from a half-deleted range.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.store.tables import PseudoLabel, RetentionRun, utcnow

RUNNING = "running"
FINISHED = ("succeeded", "failed")


def deleted_upto(session: Session) -> int:
    """The retention mark: no pseudo-label with an id at or below it is to be used."""
    return session.scalar(select(func.max(RetentionRun.upto_id))) or 0


@dataclass(frozen=True)
class Plan:
    """What a run before `before` would remove."""

    before: datetime
    upto_id: int  # the range's last id (0: nothing to remove)
    rows: int
    oldest: datetime | None
    newest: datetime | None


def plan(session: Session, before: datetime) -> Plan:
    """The range of rows created before `before`.

    Ids grow with time, so the range is ids below the first row created at or after
    `before`: the created_at index finds that row, and counting a primary-key range costs
    no more than the range itself."""
    # The smallest id among the first rows at or after `before`, not just the first: rows
    # of two API processes can commit a few milliseconds out of id order.
    first_after = (
        select(PseudoLabel.id)
        .where(PseudoLabel.created_at >= before)
        .order_by(PseudoLabel.created_at)
        .limit(1000)
        .subquery()
    )
    boundary = session.scalar(select(func.min(first_after.c.id)))
    upto = (
        boundary - 1
        if boundary is not None
        else session.scalar(select(func.max(PseudoLabel.id))) or 0
    )
    in_range = select(PseudoLabel).where(PseudoLabel.id <= upto)
    rows = session.scalar(select(func.count()).select_from(in_range.subquery())) or 0
    if not rows:
        return Plan(before, 0, 0, None, None)
    ends = session.execute(
        select(func.min(PseudoLabel.id), func.max(PseudoLabel.id)).where(PseudoLabel.id <= upto)
    ).one()
    oldest = session.scalar(select(PseudoLabel.created_at).where(PseudoLabel.id == ends[0]))
    newest = session.scalar(select(PseudoLabel.created_at).where(PseudoLabel.id == ends[1]))
    return Plan(before, int(ends[1]), rows, oldest, newest)


def running(session: Session) -> RetentionRun | None:
    return session.scalars(select(RetentionRun).where(RetentionRun.status == RUNNING)).first()


def start_run(session: Session, planned: Plan, archive: bool) -> RetentionRun:
    """Record a run; committing it raises the retention mark to its range."""
    run = RetentionRun(
        before=planned.before,
        upto_id=planned.upto_id,
        rows=planned.rows,
        archive=archive,
        status=RUNNING,
    )
    session.add(run)
    session.flush()
    return run


def get_run(session: Session, run_id: int) -> RetentionRun | None:
    return session.get(RetentionRun, run_id)


def list_runs(session: Session, limit: int = 50) -> list[RetentionRun]:
    query = select(RetentionRun).order_by(RetentionRun.id.desc()).limit(limit)
    return list(session.scalars(query))


def delete_batch(session: Session, after_id: int, upto_id: int, limit: int) -> tuple[int, int]:
    """Delete the next `limit` rows of a range above `after_id`: (rows deleted, the id the
    next batch starts after). Starting after the last batch, not at the range's start,
    keeps each batch as cheap as the first where deleted index entries await a VACUUM.

    A batch is one short transaction, so /label's inserts wait for one batch at most."""
    last = session.scalar(
        select(PseudoLabel.id)
        .where(PseudoLabel.id > after_id, PseudoLabel.id <= upto_id)
        .order_by(PseudoLabel.id)
        .offset(limit - 1)
        .limit(1)
    )
    bound = upto_id if last is None else last
    result = session.execute(
        delete(PseudoLabel).where(PseudoLabel.id > after_id, PseudoLabel.id <= bound)
    )
    return int(getattr(result, "rowcount", 0) or 0), bound


def finish(run: RetentionRun, status: str, error: str | None = None) -> None:
    run.status = status
    run.error = error
    run.finished_at = utcnow()
