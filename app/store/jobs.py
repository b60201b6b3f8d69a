"""Retraining jobs: created by the API or beat, advanced by a worker."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.store.tables import Job, utcnow

FINISHED = ("succeeded", "failed", "cancelled")


def create_job(session: Session, params: dict[str, Any], pool_upto_id: int, trigger: str) -> Job:
    job = Job(id=uuid.uuid4().hex, params=params, pool_upto_id=pool_upto_id, trigger=trigger)
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def list_jobs(session: Session, limit: int = 50) -> list[Job]:
    return list(session.scalars(select(Job).order_by(Job.created_at.desc()).limit(limit)))


def latest_pool_mark(session: Session) -> int:
    """The pool mark of the newest job that did not fail before using its pool."""
    mark = session.scalar(
        select(Job.pool_upto_id)
        .where(Job.status.in_(("queued", "running", "succeeded")))
        .order_by(Job.created_at.desc())
        .limit(1)
    )
    return mark or 0


def has_unfinished(session: Session) -> bool:
    query = select(Job.id).where(Job.status.in_(("queued", "running"))).limit(1)
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
