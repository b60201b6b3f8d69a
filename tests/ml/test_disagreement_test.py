"""The gate's exact test on labeled disagreements: its level, its power, and its verdicts."""

from __future__ import annotations

import math
import random

import pytest

from app.ml.disagreement_test import (
    Tally,
    critical_wins,
    judge,
    planned_decisive,
    power,
    tally,
    upper_tail,
)


def test_tally_counts_only_the_texts_where_the_models_differ():
    gold = ["a", "a", "b", "c", "a"]
    candidate = ["a", "a", "c", "b", "b"]
    champion = ["a", "b", "b", "a", "c"]
    # text 0 agrees; 1 candidate right; 2 champion right; 3 and 4 both wrong
    assert tally(gold, candidate, champion) == Tally(wins=1, losses=1, ties=2)


def test_exact_tail_matches_the_binomial_sum():
    n, p = 20, 0.5
    for k in (0, 5, 14, 15, 20, 21):
        expected = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))
        assert upper_tail(k, n, p) == pytest.approx(expected, abs=1e-12)
    # the textbook sign test: 15 of 20 is the first count significant at 5%, one-sided
    assert critical_wins(20, 0.5, 0.05) == 15


def test_planned_size_reaches_the_power_and_one_fewer_step_back_does_not_overshoot():
    n = planned_decisive(0.5, 0.6, 0.05, 0.8)
    assert power(n, 0.5, 0.6, 0.05) >= 0.8
    # the normal approximation puts it near 150 decisive labels
    assert 120 < n < 200


def _simulate(true_share: float, n: int, runs: int, seed: int) -> float:
    rng = random.Random(seed)
    threshold = critical_wins(n, 0.5, 0.05)
    published = 0
    for _ in range(runs):
        wins = sum(rng.random() < true_share for _ in range(n))
        published += wins >= threshold
    return published / runs


def test_a_candidate_no_better_is_published_at_most_alpha_of_the_time():
    n = planned_decisive(0.5, 0.6, 0.05, 0.8)
    assert _simulate(0.5, n, 2000, seed=1) <= 0.05 + 0.01  # alpha plus Monte Carlo error


def test_a_candidate_as_good_as_planned_is_published_with_the_planned_power():
    n = planned_decisive(0.5, 0.6, 0.05, 0.8)
    assert _simulate(0.6, n, 2000, seed=2) >= 0.8 - 0.03


def test_pending_until_the_planned_labels_then_a_verdict():
    common = {"disagreement_rate": 0.1, "margin": 0.0, "min_gain": 0.02, "alpha": 0.05}
    early = judge(Tally(10, 6, 4), target_power=0.8, unlabeled=500, **common)
    assert early.verdict == "pending"
    assert early.p_value is None
    assert early.reviews_needed > 0
    assert f"needs {early.reviews_needed} more reviews" in early.reason

    planned = early.planned_decisive
    wins = round(planned * 0.65)
    done = judge(Tally(wins, planned - wins, 10), target_power=0.8, unlabeled=200, **common)
    assert done.verdict == "publish"
    assert done.p_value is not None and done.p_value <= 0.05
    assert "shown better" in done.reason

    even = judge(
        Tally(planned // 2, planned - planned // 2, 10), target_power=0.8, unlabeled=200, **common
    )
    assert even.verdict == "reject"
    assert "not shown better" in even.reason


def test_with_every_disagreement_labeled_it_decides_on_what_there_is():
    verdict = judge(
        Tally(30, 10, 5),
        disagreement_rate=0.1,
        margin=0.0,
        min_gain=0.01,
        alpha=0.05,
        target_power=0.8,
        unlabeled=0,
    )
    assert verdict.verdict == "publish"  # 30 of 40 decisive: p < 0.001
    assert verdict.power < 0.8  # fewer labels than planned: said, not hidden
    assert verdict.gain == pytest.approx(0.1 * 20 / 45)


def test_a_margin_raises_the_share_the_candidate_must_beat():
    common = {"min_gain": 0.01, "alpha": 0.05, "target_power": 0.8, "unlabeled": 0}
    plain = judge(Tally(60, 40, 0), disagreement_rate=0.1, margin=0.0, **common)
    strict = judge(Tally(60, 40, 0), disagreement_rate=0.1, margin=0.02, **common)
    assert plain.null_share == 0.5
    assert strict.null_share == pytest.approx(0.6)
    assert plain.verdict == "publish" and strict.verdict == "reject"
