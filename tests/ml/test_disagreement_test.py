"""The gate's exact test on labeled disagreements: its level, its power, and its verdicts."""

from __future__ import annotations

import math
import random

import pytest

from app.ml.disagreement_test import (
    Spacing,
    Tally,
    critical_wins,
    judge,
    look_points,
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


def test_ties_first_do_not_end_the_test_while_disagreements_wait():
    """Found in `make simulate` (2026-12-07): a first label that was a tie made the decisive
    share 0%, so no decisive label seemed reachable, and a candidate 3.4 points better was
    rejected after one review of 87 queued."""
    common = {"disagreement_rate": 0.084, "margin": 0.0, "min_gain": 0.01, "alpha": 0.05}
    for counts in (Tally(0, 0, 1), Tally(0, 0, 5), Tally(1, 0, 6)):
        verdict = judge(counts, target_power=0.8, unlabeled=86, **common)
        assert verdict.verdict == "pending", (counts, verdict.reason)
        assert verdict.looks_used == 0
    # With nothing left to label, it decides on what there is.
    assert judge(Tally(0, 0, 87), target_power=0.8, unlabeled=0, **common).verdict == "reject"


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


# --- sequential looks ------------------------------------------------------------------------

SEQUENTIAL = {
    "disagreement_rate": 0.1,
    "margin": 0.0,
    "min_gain": 0.02,  # a planned win share of 0.6
    "alpha": 0.05,
    "target_power": 0.8,
}


def _sequential(
    true_share: float, runs: int, seed: int, looks: int = 4, spacing: Spacing = "equal"
) -> float:
    """Share of candidates published when labels arrive in batches of random size and the
    gate is asked after every batch, as beat and the label route ask it: it takes its
    looks itself. Each run starts with 40 free decisive labels (the gate split)."""
    return _sequential_runs(true_share, runs, seed, looks, spacing, SEQUENTIAL)[0]


def _sequential_runs(
    true_share: float,
    runs: int,
    seed: int,
    looks: int,
    spacing: Spacing,
    terms: dict[str, float],
    early_level: float = 0.0,
) -> tuple[float, float]:
    """`_sequential`'s share published under `terms`, and the mean decisive labels at the
    decision."""
    rng = random.Random(seed)
    published, labels = 0, 0
    for _ in range(runs):
        n = 40
        wins = sum(rng.random() < true_share for _ in range(n))
        unlabeled, used, at = 2000, 0, None
        while True:
            verdict = judge(
                Tally(wins, n - wins, 0),
                unlabeled=unlabeled,
                looks=looks,
                looks_used=used,
                last_look_at=at,
                spacing=spacing,
                early_level=early_level,
                **terms,
            )
            if verdict.verdict != "pending":
                published += verdict.verdict == "publish"
                labels += n
                break
            assert verdict.looks_used <= looks
            used, at = verdict.looks_used, verdict.looked_at
            batch = min(unlabeled, rng.randint(1, 40))
            wins += sum(rng.random() < true_share for _ in range(batch))
            n, unlabeled = n + batch, unlabeled - batch
    return published / runs, labels / runs


def test_looks_are_planned_at_alpha_over_looks():
    one = judge(Tally(), unlabeled=2000, **SEQUENTIAL)
    four = judge(Tally(), unlabeled=2000, looks=4, **SEQUENTIAL)
    assert four.level == pytest.approx(0.05 / 4)
    assert four.planned_decisive == planned_decisive(0.5, 0.6, 0.05 / 4, 0.8)
    assert four.planned_decisive > one.planned_decisive


def test_asking_after_every_batch_publishes_a_no_better_candidate_at_most_alpha():
    assert _sequential(0.5, 2000, seed=3) <= 0.05 + 0.01  # alpha plus Monte Carlo error


def test_asking_after_every_batch_keeps_the_planned_power():
    assert _sequential(0.6, 1000, seed=4) >= 0.8 - 0.03


def test_testing_at_full_alpha_after_every_batch_would_publish_far_more_often():
    """Why the looks exist: the same arrivals, tested at alpha after every batch."""
    rng = random.Random(5)
    published = 0
    for _ in range(1000):
        n = 40
        wins = sum(rng.random() < 0.5 for _ in range(n))
        while n < 400:
            if wins >= critical_wins(n, 0.5, 0.05):
                published += 1
                break
            batch = rng.randint(1, 40)
            wins += sum(rng.random() < 0.5 for _ in range(batch))
            n += batch
    assert published / 1000 > 0.1


def test_looks_come_at_shares_of_the_planned_count_and_are_never_more_than_allowed():
    first = judge(Tally(24, 16, 0), unlabeled=2000, looks=4, **SEQUENTIAL)
    planned = first.planned_decisive
    assert first.verdict == "pending" and first.looks_used == 1 and first.looked_at == 40
    assert first.p_value is not None and "not yet shown better at look 1 of 4" in first.reason
    assert first.next_look_at == math.ceil(planned / 3)
    used, at, spent = first.looks_used, first.looked_at, [40]
    for n in range(41, planned + 1):  # asked after every label, an even split
        verdict = judge(
            Tally(n // 2, n - n // 2, 0),
            unlabeled=2000 - n,
            looks=4,
            looks_used=used,
            last_look_at=at,
            **SEQUENTIAL,
        )
        if verdict.looks_used > used:
            spent.append(n)
        used, at = verdict.looks_used, verdict.looked_at
        if verdict.verdict != "pending":
            break
    assert spent == [40, math.ceil(planned / 3), math.ceil(2 * planned / 3), planned]
    assert verdict.verdict == "reject" and "look 4 of 4" in verdict.reason


def test_doubling_looks_come_at_counts_that_double_up_to_the_planned_one():
    assert look_points(1790, 8, "doubling") == [28, 56, 112, 224, 448, 895, 1790]
    assert look_points(1790, 4, "equal") == [597, 1194, 1790]
    assert look_points(1790, 1, "doubling") == look_points(1790, 1, "equal") == [1790]


# The demo simulation's terms: two models apart on 14% of texts, a plan for one point of
# accuracy (a win share of 0.536), so the plan asks for well over a thousand decisive labels.
ONE_POINT = {**SEQUENTIAL, "disagreement_rate": 0.137, "min_gain": 0.01}


def test_a_candidate_far_better_than_planned_is_published_at_an_early_doubling_look():
    # 72 wins of 112 decisive labels (p = 0.0017): a candidate several points better.
    common = {**ONE_POINT, "looks_used": 1, "last_look_at": 40, "unlabeled": 900}
    early = judge(Tally(72, 40, 9), looks=8, spacing="doubling", **common)
    assert early.verdict == "publish" and early.level == pytest.approx(0.05 / 8)
    # With equal shares its next look is at a third of the plan, hundreds of labels away.
    equal = judge(Tally(72, 40, 9), looks=4, spacing="equal", **common)
    assert equal.verdict == "pending" and equal.next_look_at > 500


def test_doubling_looks_keep_alpha_and_power_and_decide_a_clear_gain_sooner():
    null, _ = _sequential_runs(0.5, 600, 7, 8, "doubling", ONE_POINT)
    assert null <= 0.05 + 0.018  # alpha plus Monte Carlo error (2 sd)
    planned, _ = _sequential_runs(0.536, 300, 8, 8, "doubling", ONE_POINT)
    assert planned >= 0.8 - 0.05
    clear, clear_labels = _sequential_runs(0.65, 200, 9, 8, "doubling", ONE_POINT)
    equal, equal_labels = _sequential_runs(0.65, 200, 9, 4, "equal", ONE_POINT)
    assert clear >= 0.95 and equal >= 0.95
    assert clear_labels < 0.4 * equal_labels


def test_early_looks_at_a_small_level_leave_the_last_look_nearly_all_of_alpha():
    common = {**ONE_POINT, "looks": 8, "early_level": 0.001, "spacing": "doubling"}
    early = judge(Tally(60, 40, 9), unlabeled=900, looks_used=1, last_look_at=40, **common)
    assert early.verdict == "pending" and early.level == pytest.approx(0.001)
    # The plan is sized for the last look's least level, 0.05 - 7 x 0.001.
    assert early.planned_decisive == planned_decisive(0.5, early.planned_share, 0.043, 0.8)
    last = judge(Tally(60, 40, 9), unlabeled=0, looks_used=2, last_look_at=90, **common)
    assert last.level == pytest.approx(0.048) and last.verdict == "publish"  # p = 0.029


def test_early_looks_at_a_small_level_keep_alpha_and_power_and_decide_a_clear_gain_sooner():
    null, _ = _sequential_runs(0.5, 600, 10, 8, "doubling", ONE_POINT, 0.001)
    assert null <= 0.05 + 0.018  # alpha plus Monte Carlo error (2 sd)
    planned, _ = _sequential_runs(0.536, 300, 11, 8, "doubling", ONE_POINT, 0.001)
    assert planned >= 0.8 - 0.05
    clear, clear_labels = _sequential_runs(0.65, 200, 9, 8, "doubling", ONE_POINT, 0.001)
    _, equal_labels = _sequential_runs(0.65, 200, 9, 4, "equal", ONE_POINT)
    assert clear >= 0.95 and clear_labels < 0.5 * equal_labels


def test_a_look_that_could_not_publish_is_not_spent():
    # 5 decisive labels: even 5 wins of 5 cannot pass at 0.05 / 4
    verdict = judge(Tally(5, 0, 0), unlabeled=500, looks=4, **SEQUENTIAL)
    assert verdict.verdict == "pending" and verdict.looks_used == 0 and verdict.looked_at == 5
    assert verdict.p_value is None


def test_the_deadline_decides_on_what_there_is():
    # the second look was at 80 decisive labels; the third comes at two thirds of the plan
    common = {**SEQUENTIAL, "looks": 4, "looks_used": 2, "last_look_at": 80}
    waiting = judge(Tally(60, 30, 5), unlabeled=300, **common)
    assert waiting.verdict == "pending"
    assert f"needs {waiting.reviews_needed} more reviews to decide (90 of" in waiting.reason
    late = judge(Tally(60, 30, 5), unlabeled=300, final=True, **common)
    assert late.verdict == "publish" and late.looks_used == 3  # 60 of 90: p < 0.025
    assert late.level == pytest.approx(0.05 - 2 * 0.05 / 4)
    weak = judge(Tally(48, 42, 5), unlabeled=300, final=True, **common)
    assert weak.verdict == "reject" and "with 90 of the" in weak.reason
    assert "not shown better" in weak.reason


def test_the_last_look_is_taken_at_what_the_earlier_looks_left_of_alpha():
    # 70 wins of 118 decisive labels: p = 0.026, below alpha, above alpha / 4. All of the
    # candidate's disagreements are labeled, far fewer than planned: this look is the last.
    counts, common = Tally(70, 48, 12), {**SEQUENTIAL, "looks": 4, "unlabeled": 0}
    untouched = judge(counts, **common)
    assert untouched.level == pytest.approx(0.05) and untouched.verdict == "publish"
    assert "look 1 of 4, at most 0.05)" in untouched.reason
    one_spent = judge(counts, looks_used=1, last_look_at=40, **common)
    assert one_spent.level == pytest.approx(0.0375) and one_spent.verdict == "publish"
    three_spent = judge(counts, looks_used=3, last_look_at=100, **common)
    assert three_spent.level == pytest.approx(0.0125) and three_spent.verdict == "reject"
    # A look before the last stays at alpha / looks.
    early = judge(counts, **{**common, "unlabeled": 1000})
    assert early.verdict == "pending" and early.level == pytest.approx(0.0125)


def test_a_no_better_candidate_whose_disagreements_run_out_early_is_published_at_most_alpha():
    """Labels arrive in batches, the gate asked after each, and the candidate has only a few
    hundred disagreements (the common case): the last look spends what the others left."""
    published = _with_new_traffic(
        0.5, 3000, seed=6, top_ups=0, moving_rate=False, free=40, queued=(0, 400)
    )
    assert published <= 0.05 + 0.008  # alpha plus Monte Carlo error (2 sd)


def _with_new_traffic(
    true_share: float,
    runs: int,
    seed: int,
    top_ups: int,
    moving_rate: bool = True,
    free: int = 0,
    queued: tuple[int, int] = (20, 120),
) -> float:
    """Share of candidates published when `queued` disagreements (a range) are queued at
    first beside `free` decisive labels of the gate split, labels arrive in batches with
    the gate asked after each, and each time the queue is labeled out new traffic brings
    another batch of disagreements (`top_ups` of them at most; then the deadline decides
    on what there is). Where `moving_rate`, the disagreement rate the gate is told moves
    with every batch, as it does when new traffic is scored (the null does not move with
    it at a margin of 0, the planned gain does)."""
    rng = random.Random(seed)
    published = 0
    for _ in range(runs):
        n, wins = free, sum(rng.random() < true_share for _ in range(free))
        unlabeled, used, at, batches = rng.randint(*queued), 0, None, 0
        rate = 0.1
        while True:
            verdict = judge(
                Tally(wins, n - wins, 0),
                unlabeled=unlabeled,
                looks=4,
                looks_used=used,
                last_look_at=at,
                final=unlabeled == 0 and batches == top_ups,
                more_coming=batches < top_ups,
                **{**SEQUENTIAL, "disagreement_rate": rate},
            )
            if verdict.verdict != "pending":
                published += verdict.verdict == "publish"
                break
            used, at = verdict.looks_used, verdict.looked_at
            if unlabeled == 0:  # labeled out: the next batch of new traffic
                unlabeled, batches = rng.randint(*queued), batches + 1
                rate = rng.uniform(0.05, 0.15) if moving_rate else rate
                continue
            batch = min(unlabeled, rng.randint(1, 40))
            wins += sum(rng.random() < true_share for _ in range(batch))
            n, unlabeled = n + batch, unlabeled - batch
    return published / runs


def test_a_no_better_candidate_shown_new_traffic_batch_after_batch_is_published_at_most_alpha():
    assert _with_new_traffic(0.5, 3000, seed=7, top_ups=6) <= 0.05 + 0.008  # 2 sd


def test_new_traffic_gives_a_better_candidate_the_planned_power_that_running_out_denies():
    # A win share of 0.6 is the planned gain at the disagreement rate of 0.1 it keeps.
    shown = _with_new_traffic(0.6, 1000, seed=8, top_ups=10, moving_rate=False)
    ran_out = _with_new_traffic(0.6, 1000, seed=8, top_ups=0, moving_rate=False)
    assert shown >= 0.8 - 0.03 and ran_out < shown - 0.2


def test_an_empty_queue_waits_for_new_traffic_where_some_can_come():
    common = {**SEQUENTIAL, "unlabeled": 0}
    waits = judge(Tally(30, 20, 0), more_coming=True, **common)
    assert waits.verdict == "pending" and waits.reviews_needed > 0
    assert "it waits for new traffic to review" in waits.reason
    assert judge(Tally(30, 20, 0), **common).verdict != "pending"  # nothing more can come


def test_identical_answers_publish_only_where_a_loss_is_allowed():
    common = {**SEQUENTIAL, "disagreement_rate": 0.0, "unlabeled": 0, "looks": 4}
    same = judge(Tally(), **common)
    assert same.verdict == "reject" and "identical answers" in same.reason
    faster = judge(Tally(), **{**common, "margin": -0.01})
    assert faster.verdict == "publish" and "identical answers" in faster.reason


def test_a_margin_below_any_possible_loss_publishes_without_a_test():
    verdict = judge(Tally(0, 12, 3), unlabeled=0, **{**SEQUENTIAL, "margin": -1.0})
    assert verdict.verdict == "publish" and "allows any loss" in verdict.reason
    # a tolerance smaller than the loss the labels show is tested, and the loss is seen
    strict = judge(Tally(0, 12, 3), unlabeled=0, **{**SEQUENTIAL, "margin": -0.01})
    assert strict.verdict == "reject"
