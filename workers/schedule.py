"""What beat does: start a job when enough new pseudo-labels arrived; fail dead jobs."""

from __future__ import annotations

import logging
from datetime import timedelta

from app.core.config import Settings
from app.ml.job_params import JobParams
from app.store import jobs, pseudo_labels, versions
from app.store.database import Store
from app.store.tables import utcnow

log = logging.getLogger(__name__)


def submit_if_due(settings: Settings, store: Store) -> str | None:
    """Create a job (and return its id) if one is due; the caller enqueues it.

    Not while another is queued, running or waiting for reviews: a second candidate would
    be judged against the same champion and ask the same people for labels, and whichever
    was decided first would change the champion and void the other's reviews (its
    publish is refused by the compare-and-set). The review deadline bounds the wait; an
    operator may still submit one (`POST /jobs`)."""
    with store.session() as session:
        if versions.active_version(session) is None or jobs.has_unfinished(session):
            return None
        mark = jobs.latest_pool_mark(session)
        new = pseudo_labels.count_after(session, mark)
        if new < settings.retrain_min_new_labels:
            log.info(
                "retrain not due: %d new pseudo-labels of %d", new, settings.retrain_min_new_labels
            )
            return None
        job = jobs.create_job(
            session, JobParams().model_dump(), pseudo_labels.max_id(session), trigger="beat"
        )
        log.info("retrain due: %d new pseudo-labels; job %s", new, job.id)
        return job.id


def fail_stale_jobs(settings: Settings, store: Store) -> int:
    """Mark running jobs whose worker stopped sending heartbeats as failed."""
    cutoff = utcnow() - timedelta(seconds=settings.job_stale_seconds)
    with store.session() as session:
        stale = jobs.stale_running(session, cutoff)
        for job in stale:
            jobs.finish(
                job,
                "failed",
                f"worker lost: no heartbeat since {job.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC",
            )
        return len(stale)
