"""Retraining jobs: created by the API or beat, advanced by a worker, and, where the
candidate waits for people's reviews, decided later (workers/gate.py)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.store.tables import Job, utcnow

# Training done, the candidate written but not yet decided: it waits for reviews of its
# disagreements with the champion. Neither running nor finished.
PENDING_REVIEW = "pending_review"
UNFINISHED = ("queued", "running", PENDING_REVIEW)
FINISHED = ("succeeded", "failed", "cancelled")
STATUSES = (*UNFINISHED, *FINISHED)


def create_job(session: Session, params: dict[str, Any], pool_upto_id: int, trigger: str) -> Job:
    job = Job(id=uuid.uuid4().hex, params=params, pool_upto_id=pool_upto_id, trigger=trigger)
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def lock_job(session: Session, job_id: str) -> Job | None:
    """The job's row, read fresh and locked until the transaction ends, so that two
    workers deciding the same job (a task delivered twice, beat beside the label route's
    request) take turns and the second sees what the first decided."""
    if session.get_bind().dialect.name == "postgresql":
        return session.get(Job, job_id, with_for_update=True, populate_existing=True)
    # SQLite: a write as the first statement takes the database's write lock.
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(status=Job.status)
        .execution_options(synchronize_session=False)
    )
    return session.get(Job, job_id, populate_existing=True)


def list_jobs(session: Session, limit: int = 50) -> list[Job]:
    return list(session.scalars(select(Job).order_by(Job.created_at.desc()).limit(limit)))


def pending_review(session: Session) -> list[str]:
    """Ids of the jobs whose candidate waits for reviews, the oldest first."""
    query = select(Job.id).where(Job.status == PENDING_REVIEW).order_by(Job.created_at)
    return list(session.scalars(query))


def latest_pool_mark(session: Session) -> int:
    """The pool mark of the newest job that did not fail before using its pool."""
    mark = session.scalar(
        select(Job.pool_upto_id)
        .where(Job.status.in_(("queued", "running", PENDING_REVIEW, "succeeded")))
        .order_by(Job.created_at.desc())
        .limit(1)
    )
    return mark or 0


def has_unfinished(session: Session) -> bool:
    """Whether a job is queued, running or waiting for reviews: beat starts none then."""
    query = select(Job.id).where(Job.status.in_(UNFINISHED)).limit(1)
    return session.scalar(query) is not None


def stale_running(session: Session, older_than: datetime) -> list[Job]:
    return list(
        session.scalars(select(Job).where(Job.status == "running", Job.heartbeat_at < older_than))
    )


def finish(job: Job, status: str, error: str | None = None) -> None:
    job.status = status
    job.error = error
    job.finished_at = utcnow()
    if status == "succeeded":
        job.progress = 1.0
