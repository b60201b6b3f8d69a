"""The promotion gate's terms: what a job asks of its candidate before it replaces the
champion, read from the job's `promotion` section (app/ml/job_params.py).

The gate judges on texts nobody selected on: the gold `gate` split and recent traffic
where the two models disagree, labeled by people (app/ml/disagreement_test.py has the
test, workers/gate.py the looks). A swap changes answers users see, so the candidate must
be shown better than a margin, not merely score higher:
- `better`: shown to gain more accuracy than `promotion.margin` over the texts judged;
- `faster_no_worse`: as `better`, or, for a candidate cheaper to serve (at most
  FASTER_COST of the champion's compute per token), shown to lose at most
  `promotion.tolerance`: a smaller student that serves faster.

The paired bootstrap of macro-F1 on dev below is not the job's gate any more (dev picked
both models' checkpoints, and a thousand texts cannot show a point): the study in
research/ reports it beside the test split, as what such a gate would have decided.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from app.ml.disagreement_test import Spacing
from app.ml.job_params import PromotionParams

if TYPE_CHECKING:  # torch only where a model is measured: beat's re-judging reads the terms
    from torch import nn

# A candidate counts as faster when its encoder does at most this share of the champion's
# work per token (3 of 6 layers: 0.5).
FASTER_COST = 0.8


@dataclass(frozen=True)
class GateTerms:
    """What a job's gate asks of its candidate, fixed when the candidate is ready and kept
    with the job, so a candidate waiting for reviews is judged on the terms it started with."""

    rule: str
    margin: float  # the accuracy gain the candidate must be shown to exceed
    alpha: float  # the chance of publishing one no better than that, all looks together
    min_gain: float  # the gain above the margin the review plan is sized for
    target_power: float  # the chance of publishing a candidate that much better
    looks: int
    review_hours: float
    relative_cost: float  # the candidate's compute per token over the champion's
    faster: bool
    tolerance: float
    confidence: float
    look_spacing: Spacing
    early_level: float

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 5) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def test_terms(self) -> dict[str, Any]:
        """The terms the gate's test is run under (app/ml/disagreement_test.judge), at
        every look: at the end of the job and each one while the candidate waits."""
        return {
            "margin": self.margin,
            "min_gain": self.min_gain,
            "alpha": self.alpha,
            "target_power": self.target_power,
            "looks": self.looks,
            "spacing": self.look_spacing,
            "early_level": self.early_level,
        }

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> GateTerms:
        """The terms as `as_dict` kept them (extra keys, stored beside them, are ignored)."""
        values = {name: stored[name] for name in cls.__dataclass_fields__ if name in stored}
        # Terms kept before these two were terms were judged at equal shares of the plan,
        # each look at alpha / looks.
        values.setdefault("look_spacing", "equal")
        values.setdefault("early_level", 0.0)
        return cls(**values)


def gate_terms(
    gate: PromotionParams, *, default_margin: float, relative_cost: float = 1.0
) -> GateTerms:
    """The terms of a job's `promotion` section for a candidate that needs `relative_cost`
    of the champion's compute per token; `default_margin` is the margin where the section
    sets none (the PROMOTION_MARGIN setting)."""
    margin = default_margin if gate.margin is None else gate.margin
    faster = relative_cost <= FASTER_COST
    if gate.rule == "faster_no_worse" and faster:
        margin = min(margin, -gate.tolerance)
    return GateTerms(
        rule=gate.rule,
        margin=margin,
        alpha=1.0 - gate.confidence,
        min_gain=gate.min_gain,
        target_power=gate.power,
        looks=gate.looks,
        review_hours=gate.review_hours,
        relative_cost=relative_cost,
        faster=faster,
        tolerance=gate.tolerance,
        confidence=gate.confidence,
        look_spacing=gate.look_spacing,
        early_level=gate.early_level,
    )


def encoder_cost(model: nn.Module) -> int:
    """Weights the encoder applies to every token: its per-token compute, up to a factor."""
    from app.ml.modeling import encoder_layers

    try:
        counted: nn.Module = encoder_layers(model)  # type: ignore[arg-type]
    except ValueError:
        counted = model
    return int(sum(p.numel() for p in counted.parameters()))


def changed_share(before: Sequence[str], after: Sequence[str]) -> float:
    """Share of texts whose predicted label differs between two models: the churn users
    would see if `after` replaced `before`."""
    if not before:
        return 0.0
    return sum(a != b for a, b in zip(before, after, strict=True)) / len(before)


# --- the dev bootstrap (research/ reports it; no job decides by it) ---------------------
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20201001  # fixed: the same two models always get the same decision


def macro_f1_matrix(gold: np.ndarray, predicted: np.ndarray, n_labels: int) -> np.ndarray:
    """Macro-F1 of each row of `predicted` (resamples x texts) against the same row of
    `gold`; labels are ints in [0, n_labels), and every label counts in the mean."""
    rows = gold.shape[0]
    offset = np.arange(rows)[:, None] * n_labels
    size = rows * n_labels
    tp = np.bincount((offset + gold)[gold == predicted], minlength=size).reshape(rows, -1)
    gold_count = np.bincount((offset + gold).ravel(), minlength=size).reshape(rows, -1)
    pred_count = np.bincount((offset + predicted).ravel(), minlength=size).reshape(rows, -1)
    denom = gold_count + pred_count  # 2tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros(denom.shape), where=denom > 0)
    result: np.ndarray = f1.mean(axis=1)
    return result


def bootstrap_gain(
    gold: Sequence[str],
    candidate: Sequence[str],
    champion: Sequence[str],
    labels: Sequence[str],
    resamples: int = BOOTSTRAP_RESAMPLES,
    resample_seed: int = BOOTSTRAP_SEED,
) -> tuple[float, np.ndarray]:
    """Macro-F1 gain of `candidate` over `champion` on these texts, and its paired
    bootstrap distribution (the same resampled texts for both)."""
    names = sorted(set(labels) | set(gold) | set(candidate) | set(champion))
    index = {name: i for i, name in enumerate(names)}
    g = np.array([index[x] for x in gold])
    a = np.array([index[x] for x in candidate])
    b = np.array([index[x] for x in champion])
    n_labels = len(names)
    # Classes outside `labels` (none, when both models share the label set) are scored too.
    whole = macro_f1_matrix(np.stack([g, g]), np.stack([a, b]), n_labels)
    gain = float(whole[0] - whole[1])
    picks = np.random.default_rng(resample_seed).integers(0, len(g), size=(resamples, len(g)))
    gains = macro_f1_matrix(g[picks], a[picks], n_labels) - macro_f1_matrix(
        g[picks], b[picks], n_labels
    )
    return gain, gains


@dataclass
class Decision:
    publish: bool
    rule: str
    gain: float
    lower_bound: float
    confidence: float
    margin: float
    tolerance: float
    relative_cost: float
    faster: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 5) if isinstance(v, float) else v for k, v in asdict(self).items()}


def decide(
    gold: Sequence[str],
    candidate: Sequence[str],
    champion: Sequence[str],
    labels: Sequence[str],
    gate: PromotionParams,
    *,
    default_margin: float,
    relative_cost: float = 1.0,
) -> Decision:
    """A paired bootstrap of macro-F1 on dev predictions of both models, with the rule,
    margin, tolerance and confidence of a `promotion` section: what a gate on dev would
    decide (the study reports it; jobs use `gate_terms` and workers/gate.py). `relative_cost`
    is the candidate's encoder cost over the champion's."""
    if not gold:
        raise ValueError("no dev texts to compare candidate and champion on")
    rule, tolerance, confidence = gate.rule, gate.tolerance, gate.confidence
    margin = default_margin if gate.margin is None else gate.margin
    gain, gains = bootstrap_gain(gold, candidate, champion, labels)
    lower = float(np.quantile(gains, 1.0 - confidence))
    faster = relative_cost <= FASTER_COST
    better = lower > margin
    no_worse = faster and lower > -tolerance
    publish = better or (rule == "faster_no_worse" and no_worse)
    where = f"dev macro-F1 gain {gain:+.4f}, {confidence:.0%} lower bound {lower:+.4f}"
    if better:
        why = f"better: lower bound above the margin {margin:+.4f}"
    elif rule == "faster_no_worse" and no_worse:
        why = (
            f"faster ({relative_cost:.2f} of the champion's compute) and no worse than "
            f"-{tolerance:.4f}"
        )
    elif rule == "faster_no_worse" and faster:
        why = f"faster, but it may lose more than the tolerance {tolerance:.4f}"
    else:
        why = f"not shown better than the margin {margin:+.4f}"
    return Decision(
        publish=publish,
        rule=rule,
        gain=gain,
        lower_bound=lower,
        confidence=confidence,
        margin=margin,
        tolerance=tolerance,
        relative_cost=relative_cost,
        faster=faster,
        reason=f"{where}: {why}",
    )
