"""`python -m research.simulate.reorder OUT/results.json`: when the gate would have decided
each recorded candidate had its looks been spaced otherwise (`promotion.look_spacing`,
`promotion.looks`), on the labels it was given, in random orders.

A run records each decision's labeled disagreements as a tally (wins, losses, ties), not
the order they were labeled in; the review queue's order does not depend on the labels, so
every order is as likely. Each order is replayed as the service would see it: the gate
split's labels at the end of the job, then one review at a time with the gate asked after
each, and a last look when the recorded labels run out (the run's deadline or its empty
queue). It says how many reviews each rule needed and what it decided; it cannot say what
follows an earlier decision (the next candidates would meet another champion): that takes
a new run (`--param promotion.look_spacing=doubling`).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from app.ml.disagreement_test import Spacing, Tally, judge
from research.simulate.summary import BETTER

# (spacing, looks, level of the early looks; 0: alpha / looks)
RULES: list[tuple[Spacing, int, float]] = [
    ("equal", 4, 0.0),
    ("doubling", 8, 0.0),
    ("doubling", 8, 0.001),
]


def rule_name(spacing: Spacing, looks: int, early: float) -> str:
    return f"{spacing}/{looks}" + (f" at {early:g}" if early else "")


def decide(
    labels: list[str],
    free: int,
    rate: float,
    terms: dict[str, Any],
    spacing: Spacing,
    looks: int,
    early: float = 0.0,
) -> tuple[str, int]:
    """(verdict, reviews given) for labels ("w", "l", "t") arriving in this order, the
    first `free` of them the gate split's."""
    counts = Counter(labels[:free])
    used, at = 0, None
    for given in range(free, len(labels) + 1):
        if given > free:
            counts[labels[given - 1]] += 1
        verdict = judge(
            Tally(counts["w"], counts["l"], counts["t"]),
            disagreement_rate=rate,
            margin=terms["margin"],
            min_gain=terms["min_gain"],
            alpha=terms["alpha"],
            target_power=terms["target_power"],
            unlabeled=len(labels) - given,
            looks=looks,
            looks_used=used,
            last_look_at=at,
            spacing=spacing,
            early_level=early,
        )
        if verdict.verdict != "pending":
            return verdict.verdict, given - free
        used, at = verdict.looks_used, verdict.looked_at
    raise AssertionError("the last look always decides")


def reorder(result: dict[str, Any], orders: int, seed: int = 0) -> list[dict[str, Any]]:
    """Per recorded decision with a test: each rule's share of orders published and its
    median reviews, beside the run's."""
    rng = random.Random(seed)
    rows = []
    for run in result["runs"]:
        for decision in run["decisions"]:
            gate = decision.get("gate") or {}
            verdict = gate.get("verdict")
            if not verdict or not verdict.get("tally"):
                continue
            tally = verdict["tally"]
            labels = ["w"] * tally["wins"] + ["l"] * tally["losses"] + ["t"] * tally["ties"]
            free = min(len(labels), int(decision.get("gate_disagreements") or 0))
            row: dict[str, Any] = {
                "seed": run["seed"],
                "arm": run["arm"],
                "round": decision["round"],
                "gain": decision["test_macro_f1_gain"],
                "run": {"published": decision["published"], "reviews": decision["reviews"]},
            }
            for spacing, looks, early in RULES:
                outcomes = []
                for _ in range(orders):
                    # The run kept one tally for the gate split and the reviews together:
                    # which of the labels were the gate split's is drawn too.
                    rng.shuffle(labels)
                    outcomes.append(
                        decide(
                            labels,
                            free,
                            verdict["disagreement_rate"],
                            gate["terms"],
                            spacing,
                            looks,
                            early,
                        )
                    )
                row[rule_name(spacing, looks, early)] = {
                    "published": sum(v == "publish" for v, _ in outcomes) / orders,
                    "reviews": statistics.median(r for _, r in outcomes),
                }
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], orders: int) -> str:
    names = [rule_name(*rule) for rule in RULES]
    lines = [
        "### The recorded labels in random orders: when each spacing of looks decides",
        "",
        f"{orders} orders per decision; reviews: the median number given before the decision "
        "(the gate split's labels come free first); published: the share of orders in which "
        f"the candidate was published. Better: at least {BETTER * 100:.0f} point of test "
        "macro-F1 above its champion (the gate never sees it).",
        "",
        "| seed | arm | round | true Δ | run: published, reviews | "
        + " | ".join(f"{n}: published, reviews" for n in names)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(names),
    ]
    for r in rows:
        cells = [f"{r[n]['published']:.0%}, {r[n]['reviews']:.0f}" for n in names]
        run = r["run"]
        lines.append(
            f"| {r['seed']} | `{r['arm']}` | {r['round']} | {r['gain'] * 100:+.2f} | "
            f"{'yes' if run['published'] else 'no'}, {run['reviews']} | " + " | ".join(cells) + " |"
        )
    better = [r for r in rows if r["gain"] >= BETTER]
    if better:
        lines += ["", f"Candidates at least {BETTER * 100:.0f} point better ({len(better)}):"]
        for n in ["run", *names]:
            reviews = statistics.median(r[n]["reviews"] for r in better)
            share = statistics.mean(float(r[n]["published"]) for r in better)
            lines.append(f"- {n}: published {share:.0%}, median reviews {reviews:.0f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m research.simulate.reorder", description=__doc__
    )
    parser.add_argument("results", type=Path, help="a simulation's results.json")
    parser.add_argument("--orders", type=int, default=100, help="random orders per decision")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    rows = reorder(json.loads(args.results.read_text()), args.orders)
    sys.stdout.write(
        json.dumps(rows, indent=1) + "\n" if args.json else markdown(rows, args.orders)
    )


if __name__ == "__main__":
    main()
