"""Celery tasks: thin shells that take an id and call the plain functions in this package.

Heavy imports (torch, transformers) happen inside the tasks, so the prefork parent stays
small and forks before any OpenMP thread pool exists.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from app.core.config import get_settings
from app.store.database import Store
from workers.celery_app import celery_app

log = logging.getLogger(__name__)


@lru_cache
def worker_store() -> Store:
    return Store(get_settings().store_url)


@celery_app.task(name="pfp.retrain")  # type: ignore[untyped-decorator]
def retrain(job_id: str) -> None:
    from workers.retrain import run_retrain_job

    run_retrain_job(job_id, get_settings(), worker_store())


@celery_app.task(name="pfp.maybe_retrain")  # type: ignore[untyped-decorator]
def maybe_retrain() -> str | None:
    """Beat: start a job when enough new pseudo-labels have arrived since the last one."""
    from workers.schedule import submit_if_due

    job_id = submit_if_due(get_settings(), worker_store())
    if job_id:
        retrain.delay(job_id)
    return job_id


@celery_app.task(name="pfp.judge_pending")  # type: ignore[untyped-decorator]
def judge_pending(job_id: str | None = None) -> list[str]:
    """Beat (every minute) and the review API (after an answer): look again at candidates
    waiting for reviews; publish, reject or keep waiting, and ask a training worker to
    score new traffic for one whose queue is labeled out. Cheap and idempotent."""
    from workers.gate import judge_pending as look_again

    return look_again(
        get_settings(), worker_store(), job_id, score_traffic=lambda one: review_traffic.delay(one)
    )


@celery_app.task(name="pfp.review_traffic")  # type: ignore[untyped-decorator]
def review_traffic(job_id: str) -> int | None:
    """Score a batch of new traffic with a waiting candidate and its champion, and queue
    where they disagree (workers/review_traffic.py). Loads both models: a training worker's."""
    from workers.review_traffic import score_new_traffic

    return score_new_traffic(job_id, get_settings(), worker_store())


@celery_app.task(name="pfp.sweep_stale_jobs")  # type: ignore[untyped-decorator]
def sweep_stale_jobs() -> int:
    from workers.schedule import fail_stale_jobs

    return fail_stale_jobs(get_settings(), worker_store())


@celery_app.task(name="pfp.retention")  # type: ignore[untyped-decorator]
def retention(run_id: int) -> None:
    """An operator's retention run (POST /admin/retention): archive, then delete."""
    from workers.retention import run_retention

    run_retention(run_id, get_settings(), worker_store())
