"""Which pseudo-labeled texts the student learns from.

By default every one (the paper used all of its pool, unfiltered). `top_k_share` keeps,
for each class, the K texts the teacher predicted as that class with the highest
confidence (Du et al. 2020, "Self-training Improves Pre-training for NLU"): a pool
balanced across classes and rid of the teacher's least certain calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


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
