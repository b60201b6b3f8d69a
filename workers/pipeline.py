"""The stages every model goes through on its way to serving, shared by the retraining job
(`workers/retrain.py`) and the first-model bootstrap (`workers/bootstrap.py`):

    gold + pool  ->  train (`app/ml/method.py`)  ->  evaluate  ->  publish (`app.registry`)

Each stage is a plain function over the store and models; the callers only choose what
to train and how to report progress.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from app.ml.modeling import Classifier
from app.ml.training import ProgressFn, predict, scores
from app.store import gold, pseudo_labels, versions
from app.store.database import Store

Split = tuple[list[str], list[str]]  # (texts, labels)


class JobError(Exception):
    """A job that cannot run as asked; the message is shown to the user as is."""


@dataclass(frozen=True)
class Gold:
    """The gold splits: train fine-tunes, dev picks checkpoints and decides promotion,
    test is reported beside it."""

    train: Split
    dev: Split
    test: Split
    labels: list[str]  # every label the gold data uses

    def check_trainable(self, model_labels: Sequence[str]) -> None:
        """Refuse, with the reason, gold data a model with `model_labels` cannot learn from."""
        if not self.train[0]:
            raise JobError("no gold train examples to fine-tune on (import them with POST /gold)")
        if not self.dev[0]:
            raise JobError("no gold dev examples to compare candidate and champion on")
        unknown = sorted(set(self.train[1]) - set(model_labels))
        if unknown:
            raise JobError(
                f"gold labels {unknown} are not in the serving model's labels {list(model_labels)}"
            )


def load_gold(store: Store) -> Gold:
    with store.session() as session:
        return Gold(
            train=gold.load_split(session, "train"),
            dev=gold.load_split(session, "dev"),
            test=gold.load_split(session, "test"),
            labels=gold.gold_labels(session),
        )


@dataclass(frozen=True)
class Champion:
    """The model serving now: what a candidate must beat, and whose labels it keeps."""

    version: int
    labels: list[str]


def current_champion(store: Store) -> Champion | None:
    with store.session() as session:
        active = versions.active_version(session)
        row = versions.get_version(session, active) if active is not None else None
        return Champion(active, list(row.labels)) if active is not None and row else None


def gather_pool(
    store: Store,
    labels: list[str],
    upto_id: int,
    min_confidence: float | None,
    max_texts: int,
) -> tuple[list[str], list[list[float]]]:
    """The pre-training pool: (texts, logits) of the stored predictions up to `upto_id`
    made by models with `labels` in this order (logits mean nothing in another order), the
    newest prediction per text, never a text of the gold dev or test split (they judge the
    candidate), at most the `max_texts` newest (0: all)."""
    with store.session() as session:
        same_labels = [v for v, ls in versions.label_sets(session).items() if ls == labels]
        rows = pseudo_labels.pool_rows(
            session, upto_id=upto_id, versions=same_labels, min_confidence=min_confidence
        )
        held_out = gold.all_texts(session, ("dev", "test"))
    newest: dict[str, list[float]] = {}
    for row in rows:
        if row.text not in held_out:
            newest[row.text] = list(row.logits)
    pool = list(newest.items())
    if max_texts:
        pool = pool[-max_texts:]
    if not pool:
        raise JobError(
            "no pseudo-labeled texts to pre-train on (label some texts with /label first; "
            "texts of the gold dev/test splits are excluded)"
        )
    return [text for text, _ in pool], [logits for _, logits in pool]


@dataclass
class Evaluation:
    """What scoring one model on gold dev and test gives."""

    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    predictions: dict[str, list[str]] = field(default_factory=dict)
    texts_per_second: float | None = None


def _part(progress: Callable[[float], None], offset: float, share: float) -> ProgressFn:
    return lambda fraction, _loss: progress(offset + fraction * share)


def evaluate(classifier: Classifier, data: Gold, progress: Callable[[float], None]) -> Evaluation:
    """Metrics and predictions on dev and test, and the texts scored per second (on this
    worker, in this job: a rough figure beside the served one); `progress` gets 0..1."""
    out = Evaluation()
    splits = [(name, split) for name, split in (("dev", data.dev), ("test", data.test)) if split[0]]
    total = max(1, sum(len(split[0]) for _, split in splits))
    done = 0
    started = time.perf_counter()
    for name, (texts, gold_labels) in splits:
        out.predictions[name] = predict(
            classifier, texts, _part(progress, done / total, len(texts) / total)
        )
        out.metrics[name] = scores(gold_labels, out.predictions[name], classifier.labels)
        done += len(texts)
    out.texts_per_second = round(done / max(1e-9, time.perf_counter() - started), 1)
    return out
