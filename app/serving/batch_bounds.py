"""A micro-batch's bounds (how many texts, how many padded tokens a forward pass may hold)
and how gathered texts are cut into forward passes within them.

The bounds of a loaded model are measured for it at load (app/serving/batch_tuning.py),
or set (INFER_MAX_BATCH, INFER_MAX_BATCH_TOKENS), or the defaults below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from app.core.config import Settings

# Used where nothing is measured (INFER_TUNE_SECONDS=0, or a model loaded by a test).
DEFAULT_MAX_TEXTS = 8
DEFAULT_MAX_TOKENS = 2048


@dataclass(frozen=True)
class BatchBounds:
    """The micro-batcher's bounds for one loaded model, and where they came from."""

    max_texts: int
    max_tokens: int
    # "measured" (now), "cached" (an earlier measurement of this form on this CPU),
    # "settings" (INFER_MAX_BATCH / INFER_MAX_BATCH_TOKENS), "default" (not measured).
    source: str
    # texts/s per bound tried, keyed "texts=N" (at the largest token bound) and "tokens=N"
    measured: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def texts_per_s(self) -> float | None:
        """What the measurement ran at these bounds (None where nothing was measured): the
        token bounds were tried at the chosen text bound, so their figure is the chosen
        pair's."""
        return self.measured.get(f"tokens={self.max_tokens}") or self.measured.get(
            f"texts={self.max_texts}"
        )


def default_bounds() -> BatchBounds:
    """The bounds where nothing was measured nor set."""
    return BatchBounds(DEFAULT_MAX_TEXTS, DEFAULT_MAX_TOKENS, "default")


def fixed_bounds(settings: Settings) -> BatchBounds:
    """The bounds as set, the defaults where unset (nothing measured)."""
    texts, tokens = settings.infer_max_batch, settings.infer_max_batch_tokens
    if not (texts or tokens):
        return default_bounds()
    return BatchBounds(texts or DEFAULT_MAX_TEXTS, tokens or DEFAULT_MAX_TOKENS, "settings")


def plan_forward_passes(lengths: Sequence[int], max_texts: int, max_tokens: int) -> list[list[int]]:
    """Cut texts (given by their token counts) into forward passes of at most `max_texts`
    texts and `max_tokens` padded tokens (texts x the longest of the pass).

    Texts are taken shortest first, so each pass holds texts of similar length and pads
    little: one long text no longer makes many short ones pay for its length. A text longer
    than `max_tokens` on its own still gets a pass of its own. Returns the indices into
    `lengths` of each pass.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    passes: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted ascending: the text being added is the longest of the pass so far.
        if current and (len(current) >= max_texts or (len(current) + 1) * lengths[i] > max_tokens):
            passes.append(current)
            current = []
        current.append(i)
    if current:
        passes.append(current)
    return passes
