"""The statistics of a simulation: the served model's test macro-F1 per round and arm
over seeds, the paired differences of arms at the last round, and what the gate did with
candidates whose true difference on the test split is known."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any, TypeVar

from research.stats import paired

T = TypeVar("T")

# A candidate this much better than its champion in test macro-F1 is one the gate should
# publish: the share it published is the gate's power as measured.
BETTER = 0.01
# The gate's decisions of every arm together.
ALL = "all"
# Pairs of arms compared at the last round (each against the second), where both ran.
COMPARISONS = [
    ("loop", "never"),
    ("gold_only", "never"),
    ("gold_random", "never"),
    ("loop_teacher", "never"),
    ("loop", "gold_only"),
    ("loop_teacher", "gold_only"),
    ("gold_only", "gold_random"),
    ("loop_teacher", "loop"),
]


def _served(runs: list[dict[str, Any]], arm: str, number: int) -> dict[int, float]:
    """Seed -> the served model's test macro-F1 after round `number` of `arm`."""
    return {
        r["seed"]: r["rounds"][number]["served_test"]["macro_f1"]
        for r in runs
        if r["arm"] == arm and len(r["rounds"]) > number
    }


def served_per_round(runs: list[dict[str, Any]], arms: list[str], rounds: int) -> dict[str, Any]:
    """Per arm, per round (0: the first model): mean, sd and 95% t-interval over seeds."""
    out: dict[str, Any] = {}
    for arm in arms:
        rows = []
        for number in range(rounds + 1):
            values = list(_served(runs, arm, number).values())
            if not values:
                continue
            spread = paired(values, [0.0] * len(values))
            rows.append(
                {
                    "round": number,
                    "mean": spread["mean"],
                    "sd": spread["sd"],
                    "ci95": spread["ci95"],
                    "n": spread["n"],
                }
            )
        out[arm] = rows
    return out


def last_round_differences(
    runs: list[dict[str, Any]], arms: list[str], rounds: int
) -> list[dict[str, Any]]:
    """The paired difference (seed by seed) in served test macro-F1 after the last round,
    for each pair of COMPARISONS that both ran."""
    out = []
    for arm, reference in COMPARISONS:
        if arm not in arms or reference not in arms:
            continue
        mine, theirs = _served(runs, arm, rounds), _served(runs, reference, rounds)
        seeds = sorted(set(mine) & set(theirs))
        if seeds:
            diff = paired([mine[s] for s in seeds], [theirs[s] for s in seeds])
            out.append({"arm": arm, "reference": reference, **diff})
    return out


def by_truth(items: list[T], gain: Callable[[T], float]) -> tuple[list[T], list[T]]:
    """(those truly better by BETTER, those not better at all) by their test `gain`."""
    return [i for i in items if gain(i) >= BETTER], [i for i in items if gain(i) <= 0]


def _share(hits: int, of: int) -> float | None:
    return round(hits / of, 5) if of else None


def gate_decisions(runs: list[dict[str, Any]], arms: list[str]) -> dict[str, Any]:
    """Per arm: how many candidates, how many published; of those truly better by BETTER
    on test, the share published (power); of those not better, the share published (false
    publishes); labels the gate's reviews took per decision; the worst published change.
    `all` pools every arm's decisions: the gate is one rule, whatever made the candidate."""
    out: dict[str, Any] = {}
    for arm in [*arms, ALL]:
        decisions = [d for r in runs if arm in (ALL, r["arm"]) for d in r["decisions"]]
        if not decisions:
            continue
        published = [d for d in decisions if d["published"]]
        # A candidate whose champion a newer one replaced while it waited was never judged
        # to the end: it counts as a candidate, not in the gate's power or false publishes.
        judged = [d for d in decisions if d["decided_by"] != "superseded"]
        better, not_better = by_truth(judged, lambda d: d["test_macro_f1_gain"])
        by: dict[str, int] = {}
        for d in decisions:
            # A candidate that waited for the next round's traffic says so.
            how = d["decided_by"] + (" after waiting" if d.get("waited_rounds") else "")
            by[how] = by.get(how, 0) + 1
        out[arm] = {
            "candidates": len(decisions),
            "published": len(published),
            "better": len(better),
            "published_of_better": _share(sum(d["published"] for d in better), len(better)),
            "not_better": len(not_better),
            "published_of_not_better": _share(
                sum(d["published"] for d in not_better), len(not_better)
            ),
            "reviews_per_decision": round(statistics.fmean(d["reviews"] for d in decisions), 2),
            "decided_by": by,
            "worst_published_gain": min((d["test_macro_f1_gain"] for d in published), default=None),
            "mean_gain": round(statistics.fmean(d["test_macro_f1_gain"] for d in decisions), 5),
        }
    return out


def summarize(runs: list[dict[str, Any]], arms: list[str], rounds: int) -> dict[str, Any]:
    return {
        "served": served_per_round(runs, arms, rounds),
        "last_round": last_round_differences(runs, arms, rounds),
        "gate": gate_decisions(runs, arms),
        "labels_per_round_max": max(
            (row["labels"]["total"] for r in runs for row in r["rounds"]), default=0
        ),
    }
