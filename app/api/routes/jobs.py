"""Retraining jobs: submit, watch, cancel; where a candidate waits for reviews, the
promotion gate's state beside the job (`review`)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, status
from sqlalchemy.orm import Session

from app.api.deps import ADMIN, QueueDep, StoreDep
from app.api.errors import Conflict, NotFound, Unavailable
from app.api.schemas import JobAccepted, JobReview, JobView
from app.ml.job_params import JobParams
from app.store import jobs, pseudo_labels, reviews, versions
from app.store.tables import Job

router = APIRouter(tags=["jobs"], dependencies=ADMIN)
log = logging.getLogger(__name__)


@router.post("/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=JobAccepted)
def submit_job(
    store: StoreDep, queue: QueueDep, params: Annotated[JobParams | None, Body()] = None
) -> JobAccepted:
    """Queue a retraining job on every pseudo-label stored so far."""
    params = params or JobParams()
    with store.session() as session:
        if versions.active_version(session) is None:
            raise Conflict("no active model yet: wait for the first model to be published")
        upto = pseudo_labels.max_id(session)
        if upto == 0:
            raise Conflict("no pseudo-labels stored yet: label some texts with POST /label first")
        job = jobs.create_job(session, params.model_dump(), upto, trigger="api")
        job_id = job.id
    try:
        queue.send_task("pfp.retrain", args=[job_id], retry=False)
    except Exception as exc:
        # Never leave a queued job that no worker will ever see.
        with store.session() as session:
            orphan = jobs.get_job(session, job_id)
            if orphan is not None:
                session.delete(orphan)
        log.error("could not enqueue job %s: %s", job_id, exc)
        raise Unavailable(
            f"the job queue is unavailable ({type(exc).__name__}); try again"
        ) from exc
    return JobAccepted(id=job_id, status="queued")


def job_view(session: Session, job: Job) -> JobView:
    """A job as the API shows it, with the gate's state and its review queue's counts now."""
    view = JobView.model_validate(job)
    comparison = (job.metrics or {}).get("comparison")
    if isinstance(comparison, dict) and isinstance(comparison.get("judged"), dict):
        counts = (
            reviews.counts(session, job_id=job.id)[reviews.DISAGREEMENT]
            if comparison["judged"].get("queued")
            else dict.fromkeys(reviews.STATUSES, 0)
        )
        view.review = _review(comparison, counts)
    return view


def _review(comparison: dict[str, Any], queue: dict[str, int]) -> JobReview:
    """The gate's state from a job's stored comparison (workers/gate.py `gate_record`)
    and its review queue's counts now."""
    judged = comparison["judged"]
    verdict = comparison.get("verdict") or {}
    pending = verdict.get("verdict") == "pending"
    tally = verdict.get("tally") or judged.get("gate_tally") or {}
    deadline = comparison.get("deadline")
    return JobReview(
        verdict=verdict.get("verdict"),
        reason=str(comparison.get("reason", "")),
        needs=int(verdict.get("reviews_needed", 0)) if pending else 0,
        open=queue.get("open", 0),
        labeled=queue.get("labeled", 0),
        skipped=queue.get("skipped", 0),
        queued=int(judged.get("queued", 0)),
        gate_texts=int(judged.get("gate_texts", 0)),
        traffic_texts=int(judged.get("traffic_texts", 0)),
        disagreement_rate=float(verdict.get("disagreement_rate", 0.0)),
        tally={k: int(tally.get(k, 0)) for k in ("wins", "losses", "ties")},
        decisive=int(tally.get("wins", 0)) + int(tally.get("losses", 0)),
        planned_decisive=int(verdict.get("planned_decisive", 0)),
        power=float(verdict.get("power", 0.0)),
        looks_used=int(verdict.get("looks_used", 0)),
        looks=int(comparison.get("looks", 1)),
        next_look_at=verdict.get("next_look_at") if pending else None,
        deadline=datetime.fromisoformat(deadline) if deadline else None,
        waits_for_traffic=pending and bool(comparison.get("waits_for_traffic")),
        traffic_batches=int(judged.get("batches", 0)),
    )


def ask_for_judgement(queue: Any, job_id: str | None) -> None:
    """Have a worker look again at a candidate waiting for reviews (all of them: None).
    Best effort: beat looks every minute anyway."""
    try:
        queue.send_task("pfp.judge_pending", args=[job_id], retry=False)
    except Exception as exc:
        log.warning("could not ask a worker to judge job %s now: %s", job_id, exc)


@router.get("/jobs", response_model=list[JobView])
def list_jobs(store: StoreDep, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[JobView]:
    """The newest jobs first."""
    with store.session() as session:
        return [job_view(session, j) for j in jobs.list_jobs(session, limit)]


@router.get("/jobs/{job_id}", response_model=JobView)
def get_job(job_id: str, store: StoreDep) -> JobView:
    """A job's status, stage, progress, metrics and decision, and the gate's state
    (`review`): while its candidate waits for reviews, what it still needs."""
    with store.session() as session:
        job = jobs.get_job(session, job_id)
        if job is None:
            raise NotFound(f"no job with id {job_id!r}")
        return job_view(session, job)


@router.post("/jobs/{job_id}/cancel", response_model=JobView)
def cancel_job(job_id: str, store: StoreDep, queue: QueueDep) -> JobView:
    """Cancel a queued job at once; ask a running one to stop at its next step, and a
    worker to end one whose candidate waits for reviews (not published)."""
    with store.session() as session:
        job = jobs.get_job(session, job_id)
        if job is None:
            raise NotFound(f"no job with id {job_id!r}")
        if job.status in jobs.FINISHED:
            raise Conflict(f"job {job_id} already {job.status}")
        job.cancel_requested = True
        if job.status == "queued":
            jobs.finish(job, "cancelled", "cancelled by request before it started")
        pending = job.status == jobs.PENDING_REVIEW
        view = job_view(session, job)
    if pending:
        ask_for_judgement(queue, job_id)
    return view
