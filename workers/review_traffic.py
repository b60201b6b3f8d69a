"""New traffic for a candidate waiting for reviews, once its queue is labeled out.

A job judges its candidate on the disagreements in its review sample: a few hundred texts
where two models that mostly agree differ, which is often fewer decisive labels than the
test needs to see a one-point gain. Deciding on those would reject most candidates that are
better. Traffic stored after the job's mark was in neither model's pool, so it judges as
fairly as the sample did: when every queued disagreement is labeled and the test still
cannot decide, the gate (workers/gate.py, beat every minute) asks for this once a batch of
new traffic has arrived. Both models score the batch, the new disagreements join the queue,
and the test goes on with the looks it planned, until it decides or its deadline passes.

A text is left out of a batch where it is gold, was queued for this job before, or has a
copy stored at or before the job's mark: the candidate could have pre-trained on that copy.
A job queues at most REVIEW_MAX_ITEMS disagreements in all, its own and new traffic's: the
labels one decision may ask of people. Once they are queued and answered, the test decides
on what there is, as it did before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from app.core.config import Settings
from app.ml.modeling import load_classifier
from app.registry import version_dir
from app.store import jobs, pseudo_labels, retention, reviews
from app.store.database import Store
from app.store.gold import text_digest
from app.store.reviews import DISAGREEMENT, Disagreement
from app.store.tables import ReviewItem, utcnow
from workers.gate import judge_pending
from workers.judged import Judged
from workers.pipeline import PAGE_SIZE, ReviewSample
from workers.shadow import shadow_score

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    """The next batch of new traffic for a waiting candidate."""

    sample: ReviewSample  # the texts both models score, oldest first
    upto_id: int  # the newest stored prediction read: the next batch starts after it


def next_batch(store: Store, job_id: str, after_id: int, size: int, pooled_upto: int) -> Batch:
    """Up to `size` distinct texts stored after `after_id`, oldest first, none gold, none
    queued for job `job_id` before, none with a copy stored at or before `pooled_upto`."""
    taken: dict[str, tuple[int, str]] = {}
    upto = after_id
    with store.session() as session:
        cursor = max(after_id, retention.deleted_upto(session))
        while len(taken) < size:
            rows = pseudo_labels.rows_after(session, cursor, PAGE_SIZE)
            if not rows:
                break
            fresh: dict[str, tuple[int, str]] = {}
            for row in rows:
                if len(taken) + len(fresh) >= size:
                    break
                digest = text_digest(row.text)
                if digest not in taken:
                    fresh.setdefault(digest, (row.id, row.text))
                upto = row.id
            known = reviews.gold_digests(session, fresh) | reviews.queued_digests(
                session, fresh, ReviewItem.queue == DISAGREEMENT, ReviewItem.job_id == job_id
            )
            pooled = pseudo_labels.stored_upto(
                session, [text for _, text in fresh.values()], pooled_upto
            )
            taken.update(
                (digest, row)
                for digest, row in fresh.items()
                if digest not in known and row[1] not in pooled
            )
            cursor = upto
    return Batch(ReviewSample(list(taken.values()), size, len(taken), after_id), upto)


def score_new_traffic(job_id: str, settings: Settings, store: Store) -> int | None:
    """Score the next batch of new traffic for job `job_id`'s waiting candidate and queue
    where it and the champion disagree; then the gate looks again. Returns how many were
    queued (None: the job no longer waits for traffic). Idempotent: a batch is scored
    against the mark it started from, and a second run finds the mark moved."""
    with store.session() as session:
        job = jobs.lock_job(session, job_id)
        if job is None or job.status != jobs.PENDING_REVIEW:
            return None
        judged = Judged.from_dict(job.metrics["comparison"]["judged"])
        if (
            judged.traffic_upto is None
            or not judged.room
            or reviews.count_items(session, DISAGREEMENT, job_id=job_id)
        ):
            return None
        mark, pooled_upto = judged.traffic_upto, job.pool_upto_id
        candidate_version, champion_version = job.candidate_version, job.champion_version
    assert candidate_version is not None and champion_version is not None
    batch = next_batch(store, job_id, mark, judged.traffic_batch, pooled_upto)
    scored, found = 0, list[Disagreement]()
    if batch.sample.rows:
        candidate = load_classifier(version_dir(settings, candidate_version), settings.max_length)
        champion = load_classifier(version_dir(settings, champion_version), settings.max_length)
        # Seeded by job and mark: a batch scored twice is queued in the same order.
        scored, found = shadow_score(
            f"{job_id}:{mark}", candidate, champion, batch.sample, lambda _f: None
        )
    with store.session() as session:
        job = jobs.lock_job(session, job_id)
        if job is None or job.status != jobs.PENDING_REVIEW:
            return None
        record = dict(job.metrics["comparison"])
        judged = Judged.from_dict(record["judged"])
        if judged.traffic_upto != mark:  # another run queued this batch already
            return None
        added = reviews.add_disagreements(
            session, job_id, candidate_version, champion_version, found[: judged.room]
        ).added
        judged = replace(
            judged,
            traffic_texts=judged.traffic_texts + scored,
            traffic_disagreements=judged.traffic_disagreements + len(found),
            queued=judged.queued + added,
            traffic_upto=batch.upto_id,
            batches=judged.batches + 1 if scored else judged.batches,
        )
        record.update(judged=judged.as_dict(), waits_for_traffic=added == 0, traffic_asked_at=None)
        record["traffic_batches"] = [
            *record.get("traffic_batches", []),
            {
                "at": utcnow().isoformat(),
                "after_id": mark,
                "upto_id": batch.upto_id,
                "texts": scored,
                "disagreements": len(found),
                "queued": added,
            },
        ]
        job.metrics = {**job.metrics, "comparison": record}
    log.info(
        "job %s: %d new traffic texts (ids %d..%d) scored, %d disagreements, %d queued",
        job_id,
        scored,
        mark + 1,
        batch.upto_id,
        len(found),
        added,
    )
    judge_pending(settings, store, job_id)
    return added
