"""The promotion gate of a job: its first look when the candidate is ready, and the later
looks while the candidate waits for people to review its disagreements with the champion.

The gate judges on texts nobody selected on (workers/shadow.py gathers them): the gold
`gate` split, whose disagreements are labeled already, and the disagreements of recent
traffic, queued for review (app/store/reviews.py). The test and its looks are
app/ml/disagreement_test.py; the terms (margin, alpha, power, looks, how long to wait)
are the job's `promotion` section (app/ml/promotion.py).

A candidate that cannot be decided at the end of its job is written `pending`, its job
waits in `pending_review`, and `judge_pending` (beat every minute, and the review API after
each answer) looks again: publish (compare-and-set against the champion it was judged
against), reject, or keep waiting; at the deadline it decides on what there is. A candidate
whose queued disagreements are all labeled before the test can decide does not decide on
too few: traffic stored after its job began is texts neither model learned from, so once a
batch of it has arrived, a worker scores it with both models and queues the new
disagreements (workers/review_traffic.py), and the test goes on. Once
decided, the job's labeled disagreements join gold train ("a label judges once, then
teaches"). Every step is idempotent and takes the job's row lock: a task may run twice.

No torch here: beat runs this every minute.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.ml.disagreement_test import GateVerdict, Tally, judge, tally
from app.ml.promotion import GateTerms
from app.registry import PENDING, notify_swap, settle_pending
from app.store import jobs, pseudo_labels, reviews, versions
from app.store.database import Store
from app.store.reviews import DISAGREEMENT, Disagreement
from app.store.tables import Job, ModelVersion, utcnow
from workers.judged import Judged, explain

if TYPE_CHECKING:  # shadow scoring needs torch; beat imports this module without it
    from workers.shadow import Evidence

log = logging.getLogger(__name__)


def first_look(terms: GateTerms, judged: Judged) -> tuple[GateVerdict | None, str]:
    """The verdict at the end of the job (None where there was nothing to judge on), and
    the line that explains it."""
    if judged.texts == 0:
        return None, (
            "nothing to judge the candidate on: the gold has no gate split and no stored "
            "text outside gold was sampled (REVIEW_SAMPLE); not published"
        )
    verdict = judge(
        judged.gate_tally,
        disagreement_rate=judged.disagreement_rate,
        unlabeled=judged.queued,
        final=terms.review_hours == 0,
        more_coming=judged.waits_for_traffic(terms),
        **terms.test_terms(),
    )
    return verdict, explain(judged, verdict, 0)


def end_of_job_look(
    terms: GateTerms,
    evidence: Evidence,
    settings: Settings,
    now: datetime,
    traffic_upto: int | None = None,
) -> tuple[dict[str, Any], str, list[Disagreement] | None]:
    """The gate's first look, at the end of the job, on the gate split and the traffic
    sample: its record, the reason in words, and the traffic disagreements to queue for
    review where it cannot decide yet (None once it has decided). `traffic_upto`: the
    job's mark, after which new traffic may be shown to a waiting candidate, in batches as
    large as its own review sample (REVIEW_SAMPLE where it held back none; REVIEW_SAMPLE=0:
    no new traffic is shown)."""
    waits, most_queued = terms.review_hours > 0, settings.review_max_items
    traffic_batch = (
        (evidence.traffic_texts or settings.review_sample) if settings.review_sample else 0
    )
    judged = Judged(
        gate_texts=evidence.gate_texts,
        gate_tally=evidence.gate_tally,
        traffic_texts=evidence.traffic_texts,
        traffic_disagreements=len(evidence.traffic),
        queued=min(len(evidence.traffic), most_queued) if waits else 0,
        traffic_upto=traffic_upto if traffic_batch > 0 else None,
        traffic_batch=traffic_batch,
        queue_limit=most_queued,
    )
    verdict, why = first_look(terms, judged)
    pending = verdict is not None and verdict.verdict == "pending"
    if not pending:
        judged = replace(judged, queued=0)
    record = gate_record(terms, judged, verdict, why, now)
    return record, why, evidence.traffic[: judged.queued] if pending else None


def gate_record(
    terms: GateTerms, judged: Judged, verdict: GateVerdict | None, reason: str, now: datetime
) -> dict[str, Any]:
    """What the job's comparison keeps of the gate: its terms, what it judged on, the
    verdict so far, the looks taken, and the deadline while the candidate waits."""
    pending = verdict is not None and verdict.verdict == "pending"
    record: dict[str, Any] = {
        **terms.as_dict(),
        "judged": judged.as_dict(),
        "verdict": verdict.as_dict() if verdict is not None else None,
        "publish": None if pending else verdict is not None and verdict.verdict == "publish",
        "gain": round(verdict.gain, 5) if verdict is not None else 0.0,
        "power": round(verdict.power, 5) if verdict is not None else 0.0,
        "reason": reason,
        "deadline": None,
        "looks_taken": [],
        "waits_for_traffic": pending and judged.queued == 0 and judged.waits_for_traffic(terms),
    }
    if pending:
        deadline = now + timedelta(hours=terms.review_hours)
        record["deadline"] = deadline.astimezone(UTC).replace(microsecond=0).isoformat()
    if verdict is not None and verdict.p_value is not None:
        record["looks_taken"] = [_look(verdict, now)]
    return record


def _look(verdict: GateVerdict, now: datetime) -> dict[str, Any]:
    return {
        "at": now.isoformat(),
        "decisive": verdict.tally.decisive,
        "wins": verdict.tally.wins,
        "p_value": None if verdict.p_value is None else round(verdict.p_value, 6),
        "verdict": verdict.verdict,
    }


def wait_for_reviews(session: Session, job: Job, traffic: list[Disagreement], most: int) -> int:
    """Put job `job` (its candidate written `pending`) to wait for reviews: queue the first
    `most` of its traffic disagreements (already in random order) and mark it
    pending_review, in the caller's transaction. Returns how many were queued (none, where
    the candidate waits for new traffic to find them in)."""
    assert job.candidate_version is not None and job.champion_version is not None
    added = reviews.add_disagreements(
        session, job.id, job.candidate_version, job.champion_version, traffic[:most]
    )
    job.status = jobs.PENDING_REVIEW
    job.stage = "review"
    job.progress = 1.0
    record = job.metrics["comparison"]
    if record["judged"]["queued"] != added.added:  # a text turned gold meanwhile
        record = {**record, "judged": {**record["judged"], "queued": added.added}}
        job.metrics = {**job.metrics, "comparison": record}
    return added.added


def forget_earlier_candidates(session: Session, job: Job) -> None:
    """A job that ran again after its worker died may have written a pending candidate
    that nobody will decide: record it rejected."""
    stale = session.scalars(
        select(ModelVersion).where(
            ModelVersion.job_id == job.id,
            ModelVersion.decision == PENDING,
            ModelVersion.version != job.candidate_version,
        )
    )
    for row in stale:
        row.decision = "rejected"


# --- later looks ----------------------------------------------------------------------------


def judge_pending(
    settings: Settings,
    store: Store,
    job_id: str | None = None,
    now: datetime | None = None,
    score_traffic: Callable[[str], None] | None = None,
) -> list[str]:
    """Look again at the candidates waiting for reviews (or at job `job_id`'s): publish,
    reject or keep waiting, as each look says. Returns the ids of the jobs decided now.
    Cheap and idempotent; a decided job only has labels given since released to gold.

    `score_traffic(job_id)` asks a worker to score a batch of new traffic for a candidate
    whose queue is labeled out, once that batch has arrived (None: nobody is asked)."""
    now = now or utcnow()
    with store.session() as session:
        ids = [job_id] if job_id else jobs.pending_review(session)
    decided = []
    for one in ids:
        swapped_to, ended = _rejudge(store, one, now)
        if swapped_to is not None:
            notify_swap(settings, swapped_to)
        if ended:
            decided.append(one)
        elif score_traffic is not None and _traffic_due(settings, store, one, now):
            score_traffic(one)
    return decided


def _traffic_due(settings: Settings, store: Store, job_id: str, now: datetime) -> bool:
    """Whether job `job_id`'s candidate waits for new traffic and a batch of it has
    arrived; if so, the request is noted, so that beat asks once, not every minute (again
    only after a worker could have died on it)."""
    with store.session() as session:
        job = jobs.lock_job(session, job_id)
        if job is None or job.status != jobs.PENDING_REVIEW:
            return False
        record = job.metrics["comparison"]
        judged = Judged.from_dict(record["judged"])
        if not record.get("waits_for_traffic") or judged.traffic_upto is None:
            return False
        asked = record.get("traffic_asked_at")
        if asked and now < datetime.fromisoformat(asked) + timedelta(
            seconds=settings.job_stale_seconds
        ):
            return False
        if pseudo_labels.count_after(session, judged.traffic_upto) < judged.traffic_batch:
            return False
        record = {**record, "traffic_asked_at": now.isoformat()}
        job.metrics = {**job.metrics, "comparison": record}
        return True


def _rejudge(store: Store, job_id: str, now: datetime) -> tuple[int | None, bool]:
    """One job: (the version now served if it was published, whether it was decided)."""
    with store.session() as session:
        job = jobs.lock_job(session, job_id)
        if job is None:
            return None, False
        if job.status in jobs.FINISHED:
            reviews.release_to_gold(session, job_id)  # labels that came after the decision
            return None, False
        if job.status != jobs.PENDING_REVIEW:
            return None, False
        record = dict(job.metrics["comparison"])
        judged = Judged.from_dict(record["judged"])
        labeled = reviews.labeled_disagreements(session, job_id)
        reviewed = tally(
            [d.label for d in labeled],
            [d.candidate_label for d in labeled],
            [d.champion_label for d in labeled],
        )
        active = versions.active_version(session)
        if job.cancel_requested:
            reason = "cancelled by request while it waited for reviews; not published"
            return _settle(session, job, record, None, reason, now, status="cancelled")
        if active == job.candidate_version:
            reason = f"v{active} was activated by hand while it waited for reviews"
            return _settle(session, job, record, None, reason, now, published=True)
        if active != job.champion_version:
            # Said as a field too, so that a reader need not parse the reason.
            record["champion_changed_to"] = active
            reason = (
                f"the champion changed from v{job.champion_version} to v{active} while this "
                "candidate waited for reviews; not published"
            )
            return _settle(session, job, record, None, reason, now)
        verdict, waits_for_traffic = _look_again(record, judged, reviewed, session, job_id, now)
        reason = explain(judged, verdict, len(labeled))
        if verdict.verdict == "pending":
            record.update(verdict=verdict.as_dict(), power=round(verdict.power, 5), reason=reason)
            record["waits_for_traffic"] = waits_for_traffic
            record["gain"] = round(verdict.gain, 5)
            job.metrics = {**job.metrics, "comparison": record}
            job.decision_reason = f"v{job.champion_version} champion; {reason}"
            return None, False
        record.update(verdict=verdict.as_dict(), power=round(verdict.power, 5))
        record["gain"] = round(verdict.gain, 5)
        return _settle(session, job, record, verdict, reason, now)


def _look_again(
    record: dict[str, Any],
    judged: Judged,
    reviewed: Tally,
    session: Session,
    job_id: str,
    now: datetime,
) -> tuple[GateVerdict, bool]:
    """The verdict now, and whether the candidate then waits for new traffic (every
    queued disagreement labeled, and more may come)."""
    terms = GateTerms.from_dict(record)
    before = record.get("verdict") or {}
    stored = record.get("deadline")
    deadline = datetime.fromisoformat(stored) if stored else None
    late = deadline is not None and now >= deadline
    still_open = reviews.count_items(session, DISAGREEMENT, job_id=job_id)
    more_coming = judged.waits_for_traffic(terms) and not late
    verdict = judge(
        judged.gate_tally + reviewed,
        disagreement_rate=judged.disagreement_rate,
        unlabeled=still_open,
        looks_used=int(before.get("looks_used", 0)),
        last_look_at=before.get("looked_at"),
        final=late,
        more_coming=more_coming,
        **terms.test_terms(),
    )
    if verdict.p_value is not None and verdict.looks_used > int(before.get("looks_used", 0)):
        record["looks_taken"] = [*record.get("looks_taken", []), _look(verdict, now)]
    if deadline is not None and late and verdict.verdict == "reject":
        passed = deadline.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        verdict = replace(verdict, reason=f"the deadline passed ({passed}): {verdict.reason}")
    return verdict, more_coming and still_open == 0


def _settle(
    session: Session,
    job: Job,
    record: dict[str, Any],
    verdict: GateVerdict | None,
    reason: str,
    now: datetime,
    status: str = "succeeded",
    published: bool = False,
) -> tuple[int | None, bool]:
    """Decide job `job` now: its candidate published (compare-and-set) or rejected, the job
    ended, its labeled disagreements in gold train and its open ones closed."""
    assert job.candidate_version is not None
    wins = published or (verdict is not None and verdict.verdict == "publish")
    conflict = None
    if not published:  # published by hand: already active
        conflict = settle_pending(
            session,
            job.candidate_version,
            wins=wins,
            expected_champion=job.champion_version,
            reason=f"published by job {job.id} after review",
        )
    else:
        row = versions.get_version(session, job.candidate_version)
        if row is not None:
            row.decision = "published"
    if conflict:
        reason = f"{reason}; not published: {conflict}"
        wins = False
    record.update(publish=wins, reason=reason, decided_at=now.isoformat())
    job.metrics = {**job.metrics, "comparison": record}
    job.promoted = wins
    job.decision_reason = f"v{job.champion_version} champion; {reason}"
    row = versions.get_version(session, job.candidate_version)
    if row is not None:
        row.lineage = {**row.lineage, "comparison": record}
    jobs.finish(job, status)
    released, _ = reviews.release_to_gold(session, job.id)
    closed = reviews.close_open(session, job.id)
    log.info(
        "job %s: candidate v%s %s after review (%d labels to gold train, %d left unlabeled): %s",
        job.id,
        job.candidate_version,
        "published" if wins else "rejected",
        released,
        closed,
        reason,
    )
    return (job.candidate_version if wins and not published else None), True
