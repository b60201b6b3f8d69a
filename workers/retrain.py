"""The retraining job, as a plain function (Celery only calls it).

Its stages are those of `workers/pipeline.py`:
1. hold back the review sample (the newest stored traffic the champion did not learn
   from), then gather the pool: the newest stored pseudo-labels that the job's step
   budget covers (app/ml/pool.py), of models with the serving label set, one per text,
   never a text of the gold dev, gate or test split or of the review sample, read from
   the store a page at a time;
2. choose the teacher (workers/teacher.py): a stronger teacher version where one is
   installed (fine-tuned first if there is none yet), which scores the pool itself, else
   the serving model's stored predictions;
3. pre-train on the pool (the task loss on the teacher's predictions, plus the
   masked-LM loss if asked) from the base encoder or the active model -> model C;
4. fine-tune C on the gold train split -> the candidate (model D);
5. evaluate candidate and champion on gold dev, gate and test, and run both on the review
   sample: recent stored traffic the job held back from its pool (workers/shadow.py);
6. the promotion gate (workers/gate.py): an exact test on the texts where the two disagree
   among the gate split and the reviewed traffic; then publish (app.registry). A candidate
   the gate cannot decide yet is written `pending`, its traffic disagreements are queued
   for review, and the job waits in `pending_review` for `gate.judge_pending`.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.core.config import Settings
from app.core.serving_beacon import TrainingYield
from app.ml.job_params import JobParams
from app.ml.method import pretrain_on_predictions
from app.ml.modeling import Classifier, load_classifier, save_classifier
from app.ml.pool import PoolPolicy
from app.ml.promotion import changed_share, encoder_cost, gate_terms
from app.ml.training import fine_tune, in_bf16
from app.registry import publish, version_dir
from app.store import jobs
from app.store.database import Store
from app.store.tables import utcnow
from workers import gate, shadow, teacher
from workers.pipeline import (
    Champion,
    Evaluation,
    Gold,
    JobError,
    Pool,
    ReviewSample,
    current_champion,
    evaluate,
    gather_pool,
    load_gold,
    review_sample,
)
from workers.progress import JobCancelled, JobReporter

log = logging.getLogger(__name__)

STAGES = [
    ("preparing", 0.02),
    ("pretraining", 0.45),
    ("finetuning", 0.35),
    ("evaluating", 0.15),
    ("publishing", 0.03),
]
# Where a stronger teacher must first be fine-tuned and then score the pool: that takes a
# bigger encoder several times a student's work per text.
TEACHER_STAGES = [
    ("preparing", 0.01),
    ("teacher", 0.35),
    ("relabeling", 0.15),
    ("pretraining", 0.24),
    ("finetuning", 0.17),
    ("evaluating", 0.07),
    ("publishing", 0.01),
]
RELABEL_STAGES = [
    ("preparing", 0.02),
    ("relabeling", 0.15),
    ("pretraining", 0.38),
    ("finetuning", 0.30),
    ("evaluating", 0.13),
    ("publishing", 0.02),
]


def run_retrain_job(job_id: str, settings: Settings, store: Store) -> None:
    """Run the job `job_id` to an end state. Safe to call again for the same id: a finished
    job is left alone and a job found `running` (its worker died) starts over."""
    with store.session() as session:
        job = jobs.get_job(session, job_id)
        if job is None:
            log.warning("job %s not found; nothing to do", job_id)
            return
        if job.status in (*jobs.FINISHED, jobs.PENDING_REVIEW):
            log.info("job %s already %s", job_id, job.status)
            return
        if job.cancel_requested:
            jobs.finish(job, "cancelled", None)
            return
        try:
            # Flat (stored before the sections) or nested: both read the same.
            params = JobParams.model_validate(job.params).at_length(settings.max_length)
        except ValidationError as exc:
            jobs.finish(job, "failed", f"its stored parameters are not valid here: {exc}")
            return
        job.status = "running"
        job.stage = "preparing"
        job.started_at = job.heartbeat_at = utcnow()
        pool_upto = job.pool_upto_id

    # Pause between steps while an API process here serves (app/core/serving_beacon.py).
    yield_to_serving = TrainingYield(settings.models_path, settings.worker_min_share)
    reporter = JobReporter(store, job_id, STAGES, between_steps=yield_to_serving)
    try:
        outcome = _retrain(job_id, params, pool_upto, settings, store, reporter)
    except JobCancelled as exc:
        _end(store, job_id, "cancelled", str(exc))
        return
    except JobError as exc:
        _end(store, job_id, "failed", str(exc))
        return
    except Exception as exc:
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        _end(store, job_id, "failed", f"{type(exc).__name__}: {exc}")
        return
    finally:
        if yield_to_serving.paused_seconds >= 1:
            log.info("job %s paused %.0f s for serving", job_id, yield_to_serving.paused_seconds)
    queue = outcome.pop("queue")
    with store.session() as session:
        job = jobs.get_job(session, job_id)
        assert job is not None
        for key, value in outcome.items():
            setattr(job, key, value)
        job.history = {
            **(job.history or {}),
            "yield": {"paused_for_serving_seconds": round(yield_to_serving.paused_seconds, 1)},
        }
        gate.forget_earlier_candidates(session, job)
        if queue is None:
            jobs.finish(job, "succeeded")
        else:
            # Queued and waiting in one transaction: a job is never pending with no queue.
            gate.wait_for_reviews(session, job, queue, settings.review_max_items)


def _end(store: Store, job_id: str, status: str, error: str | None) -> None:
    with store.session() as session:
        job = jobs.get_job(session, job_id)
        if job is not None:
            jobs.finish(job, status, error)


def _save_history(store: Store, job_id: str, stage: str, history: dict[str, Any]) -> None:
    with store.session() as session:
        job = jobs.get_job(session, job_id)
        if job is not None:
            job.history = {**(job.history or {}), stage: history}


def _retrain(
    job_id: str,
    params: JobParams,
    pool_upto: int,
    settings: Settings,
    store: Store,
    report: JobReporter,
) -> dict[str, Any]:
    report.enter("preparing")
    champion = current_champion(store)
    if champion is None:
        raise JobError("no active model yet: the first model must be published first")
    data = load_gold(store)
    # Chosen before the pool, which is then gathered without it: the gate judges on texts
    # neither model learned from (workers/shadow.py says why).
    sample = review_sample(store, settings.review_sample, pool_upto, champion.pool_upto)
    pool = gather_pool(
        store, champion.labels, pool_upto, PoolPolicy.for_job(params), withheld=sample.texts
    )
    log.info(
        "job %s: pre-training pool of %d texts (%d stored rows read in %.1f s)",
        job_id,
        len(pool.texts),
        pool.summary["scanned"],
        pool.summary["seconds"],
    )
    data.check_trainable(champion.labels)
    pool, teacher_version, taught_by = _teach(
        job_id, params, settings, store, champion, data, pool, report
    )
    # A stronger teacher's student takes more passes over the pool; the lineage keeps the
    # parameters as submitted, and `taught_by` says how many passes.
    pretraining = params
    if teacher_version is not None:
        pretraining = teacher.student_params(params)
        taught_by["pool_passes"] = params.teacher.pool_passes
    start = (
        settings.base_model_path
        if params.pretrain.start_from == "base"
        else version_dir(settings, champion.version)
    )

    report.enter("pretraining")
    model, tokenizer, history = pretrain_on_predictions(
        start, champion.labels, pool.texts, pool.logits, pretraining, report
    )
    _save_history(store, job_id, "pretraining", history.as_dict())

    report.enter("finetuning")
    history = fine_tune(model, tokenizer, *data.train, params, report, dev=data.dev)
    _save_history(store, job_id, "finetuning", history.as_dict())

    report.enter("evaluating")
    # Scored as it would be served: at the serving max_length, cutting long texts the way
    # it was trained to.
    candidate = Classifier(
        model, tokenizer, champion.labels, settings.max_length, truncation=params.truncation
    )
    scored = _score(job_id, candidate, champion, data, sample, settings, report)
    terms = gate_terms(
        params.promotion,
        default_margin=settings.promotion_margin,
        relative_cost=scored.relative_cost,
    )
    record, why, queued = gate.end_of_job_look(
        terms, scored.evidence, settings, utcnow(), traffic_upto=pool_upto
    )
    pending = queued is not None
    metrics = _metrics(scored, record)

    report.enter("publishing")
    reason = f"v{champion.version} champion; {why}"
    if teacher_version is not None:
        reason = f"taught by teacher v{teacher_version}; {reason}"
    published = publish(
        settings,
        store,
        lambda folder: save_classifier(model, tokenizer, folder),
        labels=champion.labels,
        champion=champion.version,
        wins=record["publish"] is True,
        pending=pending,
        reason=f"published by job {job_id}",
        job_id=job_id,
        metrics=metrics["candidate"],
        lineage=_lineage(job_id, params, start, champion, pool, sample, data, metrics, taught_by),
    )
    if published.conflict:
        reason = f"{reason}; not published: {published.conflict}"
    log.info(
        "job %s: candidate v%s %s: %s",
        job_id,
        published.version,
        "waits for reviews" if pending else "published" if published.promoted else "rejected",
        reason,
    )
    return {
        "metrics": metrics,
        "promoted": None if pending else published.promoted,
        "decision_reason": reason,
        "champion_version": champion.version,
        "candidate_version": published.version,
        "queue": queued,
    }


def _teach(
    job_id: str,
    params: JobParams,
    settings: Settings,
    store: Store,
    champion: Champion,
    data: Gold,
    pool: Pool,
    report: JobReporter,
) -> tuple[Pool, int | None, dict[str, Any]]:
    """The pool's teacher: a stronger teacher version where the job's parameters and what
    is installed choose one (fine-tuned first when there is none yet), which then scores
    the pool; else the serving model, whose stored predictions the pool already holds.
    Returns the pool with its teacher's logits, that teacher's version and its lineage."""
    choice = teacher.choose(params, settings, store, champion, data)
    teacher_version = choice.version
    if choice.encoder is not None:
        report.plan(TEACHER_STAGES)
        report.enter("teacher")
        teacher_version = teacher.train_teacher(
            job_id, params, choice, settings, store, champion, data, report
        )
    elif teacher_version is not None:
        report.plan(RELABEL_STAGES)
    if teacher_version is not None:
        report.enter("relabeling")
        pool = teacher.relabel(pool, teacher_version, settings, store, report)
    log.info("job %s: taught by %s", job_id, choice.reason)
    return pool, teacher_version, teacher.describe(choice, teacher_version)


@dataclass(frozen=True)
class Scored:
    """Both models on the gold splits and the traffic sample."""

    candidate: Evaluation
    champion: Evaluation
    evidence: shadow.Evidence
    relative_cost: float  # the candidate's compute per token over the champion's
    layers: int  # the candidate's encoder layers


def _score(
    job_id: str,
    candidate: Classifier,
    champion: Champion,
    data: Gold,
    sample: ReviewSample,
    settings: Settings,
    report: JobReporter,
) -> Scored:
    """Score candidate and champion on gold dev, gate and test (metrics; the gate split
    judges), and both on the job's review sample, where their disagreements are found."""
    champion_model = load_classifier(version_dir(settings, champion.version), settings.max_length)
    splits = ("dev", "test", "gate")
    candidate_eval = evaluate(candidate, data, lambda f: report(0.35 * f), splits)
    champion_eval = evaluate(champion_model, data, lambda f: report(0.35 + 0.35 * f), splits)
    traffic_texts, traffic = shadow.shadow_score(
        job_id,
        candidate,
        champion_model,
        sample,
        lambda f: report(0.7 + 0.3 * f),
    )
    evidence = shadow.Evidence(
        gate_texts=len(data.gate[0]),
        gate_tally=shadow.gate_tally(data, candidate_eval, champion_eval),
        traffic_texts=traffic_texts,
        traffic=traffic,
    )
    return Scored(
        candidate=candidate_eval,
        champion=champion_eval,
        evidence=evidence,
        relative_cost=encoder_cost(candidate.model) / max(1, encoder_cost(champion_model.model)),
        layers=int(candidate.model.config.num_hidden_layers),
    )


def _metrics(scored: Scored, record: dict[str, Any]) -> dict[str, Any]:
    """Both models' scores and what the gate saw, as the job and the model card show them."""
    candidate, champion = scored.candidate, scored.champion
    # The churn users would see: answers on test that change if the candidate is served.
    changed = (
        changed_share(champion.predictions["test"], candidate.predictions["test"])
        if "test" in candidate.predictions
        else None
    )
    return {
        "candidate": candidate.metrics,
        "champion": champion.metrics,
        "comparison": {
            **record,
            "test_changed_share": None if changed is None else round(changed, 5),
            "candidate_layers": scored.layers,
            "candidate_texts_per_second": candidate.texts_per_second,
            "champion_texts_per_second": champion.texts_per_second,
        },
    }


def _lineage(
    job_id: str,
    params: JobParams,
    start: Path,
    champion: Champion,
    pool: Pool,
    sample: ReviewSample,
    data: Gold,
    metrics: dict[str, Any],
    taught_by: dict[str, Any],
) -> dict[str, Any]:
    """Where the candidate came from, for its model card and `GET /models`."""
    return {
        "kind": "retrain",
        "taught_by": taught_by,
        "job_id": job_id,
        "start_from": params.pretrain.start_from,
        "start_path": str(start),
        "champion_version": champion.version,
        "pool_texts": len(pool.texts),
        "pool": pool.summary,
        "review_sample": sample.summary(),
        "gold_train": len(data.train[0]),
        "params": params.model_dump(),
        "bf16": in_bf16(params),
        "layers": metrics["comparison"]["candidate_layers"],
        "comparison": metrics["comparison"],
    }
