"""Scoring gathered texts with the served model, on the inference thread: one tokenizer
call, forward passes of similar lengths within the micro-batch bounds, a prediction per
text stamped with the version that made it; and, when a batch fails, telling a text the
model cannot take from a model that fails on everything."""

from __future__ import annotations

from dataclasses import dataclass

from app.serving.batch_bounds import plan_forward_passes
from app.serving.form_choice import ServedModel
from app.serving.telemetry import BATCH_TEXTS

# Scored alone when a request fails, to tell a bad text from a broken model.
_CANARY = "ok"


@dataclass(frozen=True)
class Scored:
    """One text's prediction, stamped with the version that made it."""

    label: str
    confidence: float
    scores: dict[str, float]
    logits: list[float]
    model_version: int


class UnscorableText(ValueError):
    """The model fails on these texts of a request while it scores others: the input,
    not the model, is at fault."""

    def __init__(self, positions: list[int], cause: BaseException) -> None:
        self.positions = positions
        self.cause = f"{type(cause).__name__}: {cause}"
        where = ", ".join(f"texts[{i}]" for i in positions[:10])
        super().__init__(f"the model cannot score {where} ({self.cause})")


def score(served: ServedModel, texts: list[str]) -> list[Scored]:
    """`texts` scored by `served`, in their order."""
    classifier = served.classifier
    labels = classifier.labels
    encoded = classifier.encode(texts)
    passes = plan_forward_passes(
        [len(ids) for ids in encoded["input_ids"]],
        served.bounds.max_texts,
        served.bounds.max_tokens,
    )
    out: list[Scored | None] = [None] * len(texts)
    for rows in passes:
        BATCH_TEXTS.observe(len(rows))
        logits = classifier.logits_for(encoded, rows)
        probs = logits.softmax(-1)
        for i, row_logits, row_probs in zip(rows, logits.tolist(), probs.tolist(), strict=True):
            best = max(range(len(labels)), key=row_probs.__getitem__)
            out[i] = Scored(
                label=labels[best],
                confidence=row_probs[best],
                scores=dict(zip(labels, row_probs, strict=True)),
                logits=row_logits,
                model_version=served.version,
            )
    return [s for s in out if s is not None]


def blame(served: ServedModel, texts: list[str], exc: Exception) -> BaseException:
    """UnscorableText naming the texts that fail alone, if the model scores the others
    (or, for a request of one text, a canary); else `exc`: the model itself fails."""
    bad: list[int] = []
    for i, text in enumerate(texts):
        try:
            score(served, [text])
        except Exception:
            bad.append(i)
    if not bad:
        return exc  # fails together, not alone: not the input's fault
    if len(bad) == len(texts):
        try:
            score(served, [_CANARY])
        except Exception:
            return exc
    return UnscorableText(bad, exc)
