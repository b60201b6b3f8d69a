"""The promotion gate: real gains are published, noise is not, and a faster student can be
chosen by rule."""

from __future__ import annotations

import random

import pytest

from app.ml.job_params import PromotionParams
from app.ml.metrics import macro_f1
from app.ml.promotion import Decision, bootstrap_gain, changed_share, decide, macro_f1_matrix

LABELS = ["negative", "neutral", "positive"]


def gate(gold, candidate, champion, relative_cost: float = 1.0, **promotion) -> Decision:
    """The gate as a job with these `promotion` parameters runs it (a PROMOTION_MARGIN of 0)."""
    return decide(
        gold,
        candidate,
        champion,
        LABELS,
        PromotionParams(**promotion),
        default_margin=0.0,
        relative_cost=relative_cost,
    )


def _model(gold: list[str], accuracy: float, seed: int) -> list[str]:
    """Predictions right with probability `accuracy`, errors independent of other models."""
    rng = random.Random(seed)
    return [
        g if rng.random() < accuracy else rng.choice([x for x in LABELS if x != g]) for g in gold
    ]


def _gold(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(LABELS) for _ in range(n)]


def test_vectorised_macro_f1_agrees_with_the_plain_one():
    import numpy as np

    gold = _gold(300)
    pred = _model(gold, 0.7, 1)
    index = {x: i for i, x in enumerate(LABELS)}
    value = macro_f1_matrix(
        np.array([[index[g] for g in gold]]), np.array([[index[p] for p in pred]]), 3
    )[0]
    assert value == pytest.approx(macro_f1(gold, pred, LABELS))


def test_two_candidates_trained_alike_do_not_churn_the_served_model():
    """Models of the same quality (80% right, different mistakes) on 1,440 dev texts: the
    old rule (publish if higher on dev) swaps one way or the other; the gate never does."""
    gold = _gold(1440)
    swaps_old_rule = 0
    for seed in range(10):
        a, b = _model(gold, 0.8, 2 * seed), _model(gold, 0.8, 2 * seed + 1)
        assert not gate(gold, a, b).publish
        assert not gate(gold, b, a).publish
        swaps_old_rule += macro_f1(gold, a, LABELS) != macro_f1(gold, b, LABELS)
        # Their answers differ on about a third of the texts: each swap is visible.
        assert changed_share(a, b) > 0.25
    assert swaps_old_rule == 10


def test_a_real_gain_is_published():
    gold = _gold(1440)
    champion, candidate = _model(gold, 0.78, 1), _model(gold, 0.86, 2)
    decision = gate(gold, candidate, champion)
    assert decision.publish and decision.lower_bound > 0
    assert decision.gain == pytest.approx(
        macro_f1(gold, candidate, LABELS) - macro_f1(gold, champion, LABELS)
    )
    assert "better" in decision.reason
    # A margin larger than the gain refuses it.
    assert not gate(gold, candidate, champion, margin=0.2).publish


def test_identical_models_are_never_published():
    gold = _gold(500)
    same = _model(gold, 0.8, 1)
    decision = gate(gold, same, list(same))
    assert decision.gain == 0 and decision.lower_bound == 0 and not decision.publish


def test_faster_no_worse_publishes_a_smaller_student_within_the_tolerance():
    gold = _gold(1440)
    champion = _model(gold, 0.85, 1)
    # The student agrees with the champion except on a few texts: a small loss, well known.
    rng = random.Random(5)
    student = [p if rng.random() > 0.03 else g for p, g in zip(champion, gold, strict=True)]
    student = [
        s if rng.random() > 0.03 else rng.choice([x for x in LABELS if x != g])
        for s, g in zip(student, gold, strict=True)
    ]
    gain, _ = bootstrap_gain(gold, student, champion, LABELS)
    assert -0.02 < gain < 0.0
    kwargs = {"rule": "faster_no_worse", "tolerance": 0.03}
    assert gate(gold, student, champion, relative_cost=0.5, **kwargs).publish
    # Not faster: the same student is refused; under the plain rule too.
    assert not gate(gold, student, champion, relative_cost=1.0, **kwargs).publish
    assert not gate(gold, student, champion, relative_cost=0.5).publish
    # A student that may lose more than the tolerance is refused.
    worse = _model(gold, 0.7, 9)
    refused = gate(gold, worse, champion, relative_cost=0.5, **kwargs)
    assert not refused.publish and "tolerance" in refused.reason


def test_the_gate_needs_dev_texts():
    with pytest.raises(ValueError, match="no dev texts"):
        gate([], [], [])


def test_the_jobs_margin_wins_over_the_setting():
    gold = _gold(1440)
    champion, candidate = _model(gold, 0.78, 1), _model(gold, 0.86, 2)

    def margin_used(job_margin: float | None, setting: float) -> float:
        params = PromotionParams(margin=job_margin)
        return decide(gold, candidate, champion, LABELS, params, default_margin=setting).margin

    assert margin_used(None, 0.2) == 0.2
    assert margin_used(-0.1, 0.2) == -0.1


def test_the_gate_terms_keep_how_the_looks_fall_and_read_older_terms_as_before():
    from app.ml.job_params import PromotionParams
    from app.ml.promotion import GateTerms, gate_terms

    asked = PromotionParams(looks=8, look_spacing="doubling", early_level=0.001)
    terms = gate_terms(asked, default_margin=0.0)
    assert GateTerms.from_dict(terms.as_dict()) == GateTerms(**terms.as_dict())  # rounded
    assert (terms.looks, terms.look_spacing, terms.early_level) == (8, "doubling", 0.001)
    older = {k: v for k, v in terms.as_dict().items() if k not in ("look_spacing", "early_level")}
    before = GateTerms.from_dict(older)
    assert (before.look_spacing, before.early_level) == ("equal", 0.0)
