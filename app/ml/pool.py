"""Which pseudo-labeled texts the student learns from.

From the store, `PoolPolicy` picks the newest texts that the job's step budget covers
(the paper used all of its pool, unfiltered; a service's pool grows without end, and a
job's cost must not). Among those, by default, every one. `top_k_share` keeps,
for each class, the K texts the teacher predicted as that class with the highest
confidence (Du et al. 2020, "Self-training Improves Pre-training for NLU"): a pool
balanced across classes and rid of the teacher's least certain calls.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from app.ml.job_params import JobParams, PoolParams


def balanced_top_k(logits: Sequence[Sequence[float]], k: int) -> list[int]:
    """Indices (in pool order) of at most `k` texts per predicted class, the most
    confident first; a class predicted fewer than `k` times keeps all of its texts."""
    if k <= 0 or not logits:
        return list(range(len(logits)))
    probs = torch.softmax(torch.tensor([list(row) for row in logits], dtype=torch.float32), -1)
    confidence, predicted = probs.max(-1)
    kept: list[int] = []
    for label in predicted.unique().tolist():  # type: ignore[no-untyped-call]
        members = (predicted == label).nonzero().flatten()
        order = confidence[members].argsort(descending=True, stable=True)
        kept.extend(members[order[:k]].tolist())
    return sorted(kept)


def balanced_top_share(logits: Sequence[Sequence[float]], share: float) -> list[int]:
    """`balanced_top_k` with K = `share` of the pool over the number of classes (at most
    that share of the pool is kept); share 0 keeps every text."""
    if share <= 0 or not logits:
        return list(range(len(logits)))
    return balanced_top_k(logits, max(1, int(share * len(logits) / len(logits[0]))))


# A job reads at most this many stored rows per text it may select: enough to skip the
# duplicates, held-out texts and capped classes of a normal stream, and a bound on the
# job's time however the store looks (a class cap over a store without that class).
SCAN_FACTOR = 20


@dataclass(frozen=True)
class PoolPolicy:
    """How a job picks its pre-training texts from the store: the newest first, one per
    text (its newest prediction), within the confidence bounds of its `pool` section, at
    most `limit` of them, and no predicted label taking more than `pool.class_cap` of the
    limit.

    The limit follows from the job's step budget (`for_job`), so a job costs the same on a
    store of a thousand rows and of ten million: it learns from the newest texts it has
    the steps to see."""

    pool: PoolParams  # the job's own section, as declared
    limit: int  # 0: every text

    @classmethod
    def for_job(cls, params: JobParams) -> PoolPolicy:
        return cls(params.pool, pool_limit(params))

    @property
    def scan_limit(self) -> int:
        return self.limit * SCAN_FACTOR

    @property
    def per_label(self) -> int:
        """Texts one predicted label may take at most (0: no bound)."""
        if not self.pool.class_cap or not self.limit:
            return 0
        return max(1, math.ceil(self.pool.class_cap * self.limit))

    def as_dict(self) -> dict[str, object]:
        return {
            "order": "newest first, one per text",
            "limit": self.limit,
            "class_cap": self.pool.class_cap,
            "per_label": self.per_label,
            "min_confidence": self.pool.min_confidence,
            "max_confidence": self.pool.max_confidence,
            "scan_limit": self.scan_limit,
        }


def pool_limit(params: JobParams) -> int:
    """The most texts a job's pre-training can use: `pool.max_texts` if set, else what its
    steps cover in its epochs (each text seen `pretrain.epochs` times), else 0 (all)."""
    pretrain = params.pretrain
    if params.pool.max_texts:
        return params.pool.max_texts
    if pretrain.max_steps:  # exact steps: one pass over that many batches
        return pretrain.max_steps * params.batch_size
    if pretrain.step_budget:
        return math.ceil(pretrain.step_budget * params.batch_size / pretrain.epochs)
    return 0


class PoolSelector:
    """Applies a `PoolPolicy` to stored predictions offered newest first; holds only what
    it selects and an 8-byte digest per text it has seen."""

    def __init__(
        self, policy: PoolPolicy, held_out: set[str], withheld: Collection[str] = ()
    ) -> None:
        self.policy = policy
        self.held_out = held_out
        # The job's review sample: never pooled, and not counted against the scan's bound
        # (a sample bigger than the pool's limit would otherwise end the scan).
        self.withheld = set(withheld)
        self.texts: list[str] = []
        self.logits: list[list[float]] = []
        self.ids: list[int] = []
        self.by_label: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.scanned = 0
        self._seen: set[bytes] = set()

    @property
    def scan_limit_reached(self) -> bool:
        """Read as far as the policy allows; the review sample's rows do not count."""
        scanned = self.scanned - self.skipped["review_sample"]
        return bool(self.policy.limit and scanned >= self.policy.scan_limit)

    @property
    def done(self) -> bool:
        full = self.policy.limit and len(self.texts) >= self.policy.limit
        return bool(full or self.scan_limit_reached)

    def offer(self, row_id: int, text: str, label: str, logits: Sequence[float]) -> None:
        self.scanned += 1
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        if digest in self._seen:  # an older prediction of a text already taken or refused
            self.skipped["older_duplicate"] += 1
            return
        self._seen.add(digest)
        if text in self.held_out:
            self.skipped["gold_dev_or_test"] += 1
            return
        if text in self.withheld:
            self.skipped["review_sample"] += 1
            return
        cap = self.policy.per_label
        if cap and self.by_label[label] >= cap:
            self.skipped["class_cap"] += 1
            return
        self.by_label[label] += 1
        self.texts.append(text)
        self.logits.append(list(logits))
        self.ids.append(row_id)

    def summary(self) -> dict[str, object]:
        """What the job's lineage and model card record about its pool."""
        return {
            "policy": self.policy.as_dict(),
            "selected": len(self.texts),
            "scanned": self.scanned,
            "scan_limit_reached": self.scan_limit_reached,
            "skipped": dict(sorted(self.skipped.items())),
            "by_label": dict(sorted(self.by_label.items())),
            "id_range": [min(self.ids), max(self.ids)] if self.ids else None,
        }
