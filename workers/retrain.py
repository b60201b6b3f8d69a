"""The retraining job, as a plain function (Celery only calls it).

1. gather the pool: stored pseudo-labels of models with the serving label set, one per
   text (the newest), never a text of the gold dev or test split;
2. joint pre-training (MLM + task loss on the pseudo-labels) from the base encoder or
   the active model -> model C;
3. fine-tuning of C on the gold train split -> the candidate (model D);
4. evaluation of candidate and champion on gold dev and test;
5. the promotion gate (app/ml/promotion.py): publish the candidate if a paired bootstrap on
   dev shows it better than the champion (or, under the faster_no_worse rule, faster and
   no worse than the tolerance).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.core.config import Settings
from app.ml.job_params import JobParams
from app.ml.method import fine_tune_on_gold, pretrain_on_predictions
from app.ml.modeling import Classifier, load_classifier, save_classifier
from app.ml.promotion import changed_share, decide, encoder_cost
from app.ml.training import ProgressFn, predict, scores
from app.registry import (
    PublishConflict,
    activate_if_champion,
    notify_swap,
    version_dir,
    write_version,
)
from app.serving.busy import TrainingYield
from app.store import gold, jobs, pseudo_labels
from app.store import registry as versions
from app.store.database import Store
from app.store.tables import utcnow
from workers.progress import JobCancelled, JobReporter

log = logging.getLogger(__name__)

STAGES = [
    ("preparing", 0.02),
    ("pretraining", 0.45),
    ("finetuning", 0.35),
    ("evaluating", 0.15),
    ("publishing", 0.03),
]


class JobError(Exception):
    """A job that cannot run as asked; the message is shown to the user as is."""


def run_retrain_job(job_id: str, settings: Settings, store: Store) -> None:
    """Run the job `job_id` to an end state. Safe to call again for the same id: a finished
    job is left alone and a job found `running` (its worker died) starts over."""
    with store.session() as session:
        job = jobs.get_job(session, job_id)
        if job is None:
            log.warning("job %s not found; nothing to do", job_id)
            return
        if job.status in jobs.FINISHED:
            log.info("job %s already %s", job_id, job.status)
            return
        if job.cancel_requested:
            jobs.finish(job, "cancelled", None)
            return
        job.status = "running"
        job.stage = "preparing"
        job.started_at = job.heartbeat_at = utcnow()
        params = JobParams.model_validate(job.params)
        pool_upto = job.pool_upto_id

    # Pause between steps while an API process on this machine serves (app/serving/busy.py).
    courtesy = TrainingYield(settings.models_path, settings.worker_min_share)
    reporter = JobReporter(store, job_id, STAGES, between_steps=courtesy)
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
        if courtesy.paused_seconds >= 1:
            log.info("job %s paused %.0f s for serving", job_id, courtesy.paused_seconds)
    with store.session() as session:
        job = jobs.get_job(session, job_id)
        assert job is not None
        for key, value in outcome.items():
            setattr(job, key, value)
        job.history = {
            **(job.history or {}),
            "yield": {"paused_for_serving_seconds": round(courtesy.paused_seconds, 1)},
        }
        jobs.finish(job, "succeeded")


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
    with store.session() as session:
        champion = versions.active_version(session)
        if champion is None:
            raise JobError("no active model yet: the first model must be published first")
        champion_row = versions.get_version(session, champion)
        assert champion_row is not None
        labels = list(champion_row.labels)
        same_labels = [v for v, ls in versions.label_sets(session).items() if ls == labels]
        rows = pseudo_labels.pool_rows(
            session, upto_id=pool_upto, versions=same_labels, min_confidence=params.min_confidence
        )
        held_out = gold.all_texts(session, ("dev", "test"))
        train_texts, train_labels = gold.load_split(session, "train")
        dev = gold.load_split(session, "dev")
        test = gold.load_split(session, "test")

    # Newest prediction per text; evaluation texts never enter pre-training.
    newest: dict[str, list[float]] = {}
    for row in rows:
        if row.text not in held_out:
            newest[row.text] = list(row.logits)
    pool = list(newest.items())
    if params.max_pool_texts:
        pool = pool[-params.max_pool_texts :]
    if not pool:
        raise JobError(
            "no pseudo-labeled texts to pre-train on (label some texts with /label first; "
            "texts of the gold dev/test splits are excluded)"
        )
    if not train_texts:
        raise JobError("no gold train examples to fine-tune on (import them with POST /gold)")
    if not dev[0]:
        raise JobError("no gold dev examples to compare candidate and champion on")
    unknown = sorted(set(train_labels) - set(labels))
    if unknown:
        raise JobError(f"gold labels {unknown} are not in the serving model's labels {labels}")

    start: Path = (
        settings.base_model_path if params.start_from == "base" else version_dir(settings, champion)
    )
    report.enter("pretraining")
    model, tokenizer, history = pretrain_on_predictions(
        start, labels, [t for t, _ in pool], [lg for _, lg in pool], params, report
    )
    _save_history(store, job_id, "pretraining", history.as_dict())

    report.enter("finetuning")
    history = fine_tune_on_gold(
        model, tokenizer, train_texts, train_labels, params, report, dev=dev
    )
    _save_history(store, job_id, "finetuning", history.as_dict())

    report.enter("evaluating")
    # Both are scored as they are (or would be) served: with the serving max_length, each
    # cutting long texts the way it was trained to.
    candidate = Classifier(
        model, tokenizer, labels, settings.max_length, truncation=params.truncation
    )
    champion_model = load_classifier(version_dir(settings, champion), settings.max_length)
    candidate_eval = _evaluate_both(candidate, dev, test, lambda f: report(f / 2))
    champion_eval = _evaluate_both(champion_model, dev, test, lambda f: report(0.5 + f / 2))
    relative_cost = encoder_cost(model) / max(1, encoder_cost(champion_model.model))
    del champion_model
    metrics: dict[str, Any] = {
        "candidate": candidate_eval.metrics,
        "champion": champion_eval.metrics,
    }

    report.enter("publishing")
    margin = (
        settings.promotion_margin if params.promotion_margin is None else params.promotion_margin
    )
    decision = decide(
        dev[1],
        candidate_eval.predictions["dev"],
        champion_eval.predictions["dev"],
        labels,
        rule=params.promotion_rule,
        margin=margin,
        tolerance=params.promotion_tolerance,
        confidence=params.promotion_confidence,
        relative_cost=relative_cost,
    )
    wins = decision.publish
    # The churn users would see: answers on test that change if the candidate is served.
    changed = (
        changed_share(champion_eval.predictions["test"], candidate_eval.predictions["test"])
        if test[0]
        else None
    )
    metrics["comparison"] = {
        **decision.as_dict(),
        "test_changed_share": None if changed is None else round(changed, 5),
        "candidate_layers": int(model.config.num_hidden_layers),
        "candidate_texts_per_second": candidate_eval.texts_per_second,
        "champion_texts_per_second": champion_eval.texts_per_second,
    }
    reason = (
        f"v{champion} champion, dev macro-F1 {metrics['candidate']['dev']['macro_f1']:.4f} "
        f"vs {metrics['champion']['dev']['macro_f1']:.4f}; {decision.reason}"
    )
    lineage = {
        "kind": "retrain",
        "job_id": job_id,
        "start_from": params.start_from,
        "start_path": str(start),
        "champion_version": champion,
        "pool_texts": len(pool),
        "gold_train": len(train_texts),
        "params": params.model_dump(),
        "layers": int(model.config.num_hidden_layers),
        "comparison": metrics["comparison"],
    }
    version = write_version(
        settings,
        store,
        lambda folder: save_classifier(model, tokenizer, folder),
        labels=labels,
        parent_version=champion,
        job_id=job_id,
        metrics=metrics["candidate"],
        lineage=lineage,
        decision="published" if wins else "rejected",
    )
    promoted = False
    if wins:
        try:
            activate_if_champion(store, version, champion, f"published by job {job_id}")
            promoted = True
            notify_swap(settings, version)
        except PublishConflict as exc:
            reason = f"{reason}; not published: {exc}"
            with store.session() as session:
                candidate_row = versions.get_version(session, version)
                if candidate_row is not None:
                    candidate_row.decision = "rejected"
    log.info(
        "job %s: candidate v%s %s: %s",
        job_id,
        version,
        "published" if promoted else "rejected",
        reason,
    )
    return {
        "metrics": metrics,
        "promoted": promoted,
        "decision_reason": reason,
        "champion_version": champion,
        "candidate_version": version,
    }


def _part(progress: Callable[[float], None], offset: float, share: float) -> ProgressFn:
    return lambda fraction, _loss: progress(offset + fraction * share)


class _Evaluation:
    """What scoring one model on gold dev and test gives."""

    def __init__(self) -> None:
        self.metrics: dict[str, dict[str, float]] = {}
        self.predictions: dict[str, list[str]] = {}
        self.texts_per_second: float | None = None


def _evaluate_both(
    classifier: Classifier,
    dev: tuple[list[str], list[str]],
    test: tuple[list[str], list[str]],
    progress: Callable[[float], None],
) -> _Evaluation:
    """Metrics and predictions on dev and test, and the texts scored per second (on this
    worker, in this job: a rough figure beside the served one); `progress` gets 0..1."""
    out = _Evaluation()
    total = max(1, len(dev[0]) + len(test[0]))
    done = 0
    started = time.perf_counter()
    for split, (texts, gold_labels) in (("dev", dev), ("test", test)):
        if not texts:
            continue
        out.predictions[split] = predict(
            classifier, texts, _part(progress, done / total, len(texts) / total)
        )
        out.metrics[split] = scores(gold_labels, out.predictions[split], classifier.labels)
        done += len(texts)
    out.texts_per_second = round(done / max(1e-9, time.perf_counter() - started), 1)
    return out
