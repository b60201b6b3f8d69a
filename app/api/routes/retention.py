"""Retention: archive pseudo-labels older than a date to Parquet and delete them.

`POST /admin/retention` answers with what would go (a dry run, the default); with
`dry_run: false` it records a run, which at once keeps retraining jobs off the range, and
queues it for a worker (workers/retention.py), which archives and then deletes in batches.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Body, Query, status
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.api.deps import ADMIN, QueueDep, StoreDep
from app.api.errors import Conflict, Invalid, NotFound, Unavailable
from app.api.schemas import RetentionPlanView, RetentionRequest, RetentionRunView
from app.store import retention

router = APIRouter(prefix="/admin/retention", tags=["retention"], dependencies=ADMIN)
log = logging.getLogger(__name__)

# Serialises run creation across API processes on PostgreSQL (SQLite has one writer).
_RUN_LOCK = 0x7066_7072  # "pfpr"


def _before(moment: datetime) -> datetime:
    before = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    if before > datetime.now(UTC):
        raise Invalid("before is in the future: only pseudo-labels already stored can be removed")
    return before


def _plan_view(session: Session, plan: retention.Plan, dry_run: bool) -> RetentionPlanView:
    running = retention.running(session)
    return RetentionPlanView(
        before=plan.before,
        dry_run=dry_run,
        rows=plan.rows,
        upto_id=plan.upto_id,
        oldest=plan.oldest,
        newest=plan.newest,
        retention_mark=retention.deleted_upto(session),
        running_run=running.id if running else None,
    )


@router.post(
    "",
    response_model=RetentionPlanView | RetentionRunView,
    responses={202: {"model": RetentionRunView}},
)
def remove_old_labels(
    store: StoreDep, queue: QueueDep, body: Annotated[RetentionRequest, Body()]
) -> RetentionPlanView | JSONResponse:
    """Dry run (the default): what a run before `before` would remove. Otherwise start it
    (202): the answer is the run, to follow at `GET /admin/retention/{id}`. With `resume`,
    the run in progress is queued again (its `before` stays what it was)."""
    before = _before(body.before)
    with store.session() as session:
        if body.dry_run:
            return _plan_view(session, retention.plan(session, before), dry_run=True)
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _RUN_LOCK})
        busy = retention.running(session)
        if busy is not None and not body.resume:
            raise Conflict(
                f"retention run {busy.id} is still running ({busy.deleted} of {busy.rows} "
                'rows deleted); wait for it to finish, or send "resume": true if its worker '
                "task was lost"
            )
        if busy is not None:
            run_id, resumed = busy.id, True
        else:
            plan = retention.plan(session, before)
            if plan.rows == 0:
                raise Conflict(
                    f"nothing to remove: no stored pseudo-label was created before {before}"
                )
            run_id, resumed = retention.start_run(session, plan, archive=body.archive).id, False
    try:
        queue.send_task("pfp.retention", args=[run_id], retry=False)
    except Exception as exc:
        # A run no worker will ever see would hold the mark, and so keep jobs off the range.
        with store.session() as session:
            orphan = retention.get_run(session, run_id)
            if orphan is not None and not resumed:
                session.delete(orphan)
        log.error("could not enqueue retention run %s: %s", run_id, exc)
        raise Unavailable(
            f"the job queue is unavailable ({type(exc).__name__}); try again"
        ) from exc
    with store.session() as session:
        started = retention.get_run(session, run_id)
        assert started is not None
        view = RetentionRunView.model_validate(started)
    return JSONResponse(view.model_dump(mode="json"), status_code=status.HTTP_202_ACCEPTED)


@router.get("", response_model=list[RetentionRunView])
def list_runs(
    store: StoreDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[RetentionRunView]:
    with store.session() as session:
        return [RetentionRunView.model_validate(r) for r in retention.list_runs(session, limit)]


@router.get("/{run_id}", response_model=RetentionRunView)
def get_run(run_id: int, store: StoreDep) -> RetentionRunView:
    with store.session() as session:
        run = retention.get_run(session, run_id) if run_id <= 2**31 - 1 else None
        if run is None:
            raise NotFound(f"no retention run {run_id}")
        return RetentionRunView.model_validate(run)
