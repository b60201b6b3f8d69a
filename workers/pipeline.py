"""The stages every model goes through on its way to serving, shared by the retraining job
(`workers/retrain.py`) and the first-model bootstrap (`workers/bootstrap.py`):

    gold + pool  ->  train (`app/ml/method.py`)  ->  evaluate  ->  publish (`app.registry`)

Each stage is a plain function over the store and models; the callers only choose what
to train and how to report progress.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.ml.modeling import Classifier
from app.ml.pool import PoolPolicy, PoolSelector
from app.ml.training import ProgressFn, predict, scores
from app.store import gold, pseudo_labels, retention, reviews, versions
from app.store.database import Store

Split = tuple[list[str], list[str]]  # (texts, labels)

# Stored rows per database round trip while a job reads its pool.
PAGE_SIZE = 2_000
# Gold splits no job pre-trains on: they pick, judge or report the candidate.
HELD_OUT = ("dev", "gate", "test")
# The most of the traffic a job could pre-train on that it holds back for the gate: the
# loop's gain comes from its pool, so a first job over little traffic keeps half of it.
REVIEW_SHARE = 0.5


class JobError(Exception):
    """A job that cannot run as asked; the message is shown to the user as is."""


@dataclass(frozen=True)
class Gold:
    """The gold splits: train fine-tunes, dev picks checkpoints, gate judges candidate and
    champion (nothing is trained or selected on it), test is reported beside them."""

    train: Split
    dev: Split
    gate: Split
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
            gate=gold.load_split(session, "gate"),
            test=gold.load_split(session, "test"),
            labels=gold.gold_labels(session),
        )


@dataclass(frozen=True)
class Champion:
    """The model serving now: what a candidate must beat, and whose labels it keeps."""

    version: int
    labels: list[str]
    # The newest stored prediction its job's pool could hold (0: it pre-trained on none,
    # as a first model): texts stored after it are texts the champion never learned from.
    pool_upto: int = 0


def current_champion(store: Store) -> Champion | None:
    with store.session() as session:
        active = versions.active_version(session)
        row = versions.get_version(session, active) if active is not None else None
        if active is None or row is None:
            return None
        pool = (row.lineage or {}).get("pool") or {}
        return Champion(active, list(row.labels), int(pool.get("upto_id") or 0))


@dataclass(frozen=True)
class Pool:
    """The texts a job pre-trains on, their teacher logits, and how they were chosen."""

    texts: list[str]
    logits: list[list[float]]
    summary: dict[str, Any]


def gather_pool(
    store: Store,
    labels: list[str],
    upto_id: int,
    policy: PoolPolicy,
    withheld: Collection[str] = (),
) -> Pool:
    """The pre-training pool, chosen in the store by `policy` (app/ml/pool.py): stored
    predictions up to `upto_id`, newest first, made by models with `labels` in this order
    (logits mean nothing in another order), one per text, never a text of the gold dev,
    gate or test split (they select, judge or report the candidate), never one of the
    `withheld` texts (the job's review sample: a candidate is judged on texts it did not
    learn from), never one in a range that retention is deleting.

    Pages stream from the database; the job holds the texts it selects and no more, so its
    memory and time stay flat however large the store grows."""
    started = time.perf_counter()
    with store.session() as session:
        same_labels = [v for v, ls in versions.label_sets(session).items() if ls == labels]
        held_out = gold.all_texts(session, HELD_OUT)
        floor = retention.deleted_upto(session)
        selector = PoolSelector(policy, held_out, withheld)
        pages = pseudo_labels.pool_pages(
            session,
            upto_id=upto_id,
            above_id=floor,
            versions=same_labels,
            min_confidence=policy.pool.min_confidence,
            max_confidence=policy.pool.max_confidence,
            page_size=PAGE_SIZE,
        )
        for row in itertools.chain.from_iterable(pages):
            selector.offer(row.id, row.text, row.label, row.logits)
            if selector.done:
                break
    with store.session() as session:
        # Retention raises its mark before it deletes a row: a range it started on while
        # we read may have lost rows under us, so none of that range is used.
        now_floor = retention.deleted_upto(session)
    keep = [i for i, row_id in enumerate(selector.ids) if row_id > now_floor]
    if not keep:
        raise JobError(
            "no pseudo-labeled texts to pre-train on (label some texts with /label first; "
            "texts of the gold dev, gate and test splits, and the job's review sample, are "
            "excluded)"
        )
    # Oldest first, as the texts arrived: training shuffles them anyway.
    keep.reverse()
    summary = {
        **selector.summary(),
        "upto_id": upto_id,
        "above_id": now_floor,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if len(keep) < len(selector.ids):
        kept_ids = [selector.ids[i] for i in keep]
        summary["dropped_for_retention"] = len(selector.ids) - len(keep)
        summary["selected"] = len(keep)
        summary["id_range"] = [min(kept_ids), max(kept_ids)]
    return Pool(
        texts=[selector.texts[i] for i in keep],
        logits=[selector.logits[i] for i in keep],
        summary=summary,
    )


@dataclass(frozen=True)
class ReviewSample:
    """The stored traffic a job holds back from its pool to judge its candidate on: texts
    neither the candidate nor the champion pre-trained on, newest first."""

    rows: list[tuple[int, str]]  # (id of the text's newest stored prediction, text)
    size: int  # what was asked for (REVIEW_SAMPLE)
    seen: int  # distinct traffic texts looked at: the job could pool at least these
    above_id: int  # only texts stored after the champion's pool (0: any)

    @property
    def texts(self) -> list[str]:
        return [text for _, text in self.rows]

    def summary(self) -> dict[str, int]:
        return {
            "texts": len(self.rows),
            "asked": self.size,
            "traffic_seen": self.seen,
            "above_id": self.above_id,
        }


def review_sample(store: Store, size: int, upto_id: int, above_id: int = 0) -> ReviewSample:
    """The newest `size` distinct stored texts up to `upto_id` that are not gold (any
    split) and whose newest prediction was stored after `above_id` (the champion's pool,
    so the champion never learned from them either), never a row in a range retention
    deletes. The job withholds them from its pool; candidate and champion are then both
    run on them to find where they disagree.

    At most REVIEW_SHARE of the distinct traffic looked at is taken: the scan stops once
    it has seen `size / REVIEW_SHARE` texts, so over a store with less traffic than that
    the sample shrinks and the pool keeps the rest. A text stored again after the
    champion's pool counts as new; the champion may have seen its older copy, which can
    only favour the champion."""
    if size <= 0:
        return ReviewSample([], size, 0, above_id)
    enough = int(size / REVIEW_SHARE)
    seen: dict[str, tuple[int, str]] = {}
    with store.session() as session:
        every_version = list(versions.label_sets(session))
        pages = pseudo_labels.pool_pages(
            session,
            upto_id=upto_id,
            above_id=retention.deleted_upto(session),
            versions=every_version,
            page_size=PAGE_SIZE,
        )
        for page in pages:
            fresh: dict[str, Any] = {}
            for row in page:  # newest first: a text keeps its newest prediction
                fresh.setdefault(gold.text_digest(row.text), row)
            known = reviews.gold_digests(session, fresh)
            for digest, row in fresh.items():
                if digest not in known and digest not in seen:
                    seen[digest] = (row.id, row.text)
            if len(seen) >= enough:
                break
    newest = list(seen.values())[:enough]
    take = min(size, int(len(newest) * REVIEW_SHARE))
    rows = [row for row in newest if row[0] > above_id][:take]
    return ReviewSample(rows, size, len(newest), above_id)


@dataclass
class Evaluation:
    """What scoring one model on the gold splits gives."""

    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    predictions: dict[str, list[str]] = field(default_factory=dict)
    texts_per_second: float | None = None


def _part(progress: Callable[[float], None], offset: float, share: float) -> ProgressFn:
    return lambda fraction, _loss: progress(offset + fraction * share)


def evaluate(
    classifier: Classifier,
    data: Gold,
    progress: Callable[[float], None],
    names: Sequence[str] = ("dev", "test"),
) -> Evaluation:
    """Metrics and predictions on the splits `names` (those that have texts), and the
    texts scored per second (on this worker, in this job: a rough figure beside the served
    one); `progress` gets 0..1."""
    out = Evaluation()
    every = {"dev": data.dev, "test": data.test, "gate": data.gate}
    splits = [(name, every[name]) for name in names if every[name][0]]
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
