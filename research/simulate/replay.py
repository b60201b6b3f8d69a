"""`python -m research.simulate.replay OUT/results.json`: every gate decision of a
simulation judged again by today's gate (app/ml/disagreement_test.py) on the evidence it
had, beside what the gate of the run decided, and the candidate's true difference.

A gate rule changes what is published; rerunning the simulation for each change costs
hours. Replaying the decisions costs nothing and answers half of it: on the same labeled
disagreements, would the gate now publish the candidates that are truly better, and still
keep out those that are not? It cannot say what follows a different decision (the next
round's champion, and so its candidates, would change): that takes a new run.

Each decision is replayed as the last look it was (every queued disagreement answered, or
the deadline), with the looks spent before it. Records from before the simulation kept the
gate's verdict (2026-12-07) are read from their decision line: its wins, losses, ties and
disagreement rate, and its look number.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from app.ml.disagreement_test import Tally, critical_wins, judge
from research.simulate.summary import ALL, BETTER, by_truth
from research.stats import paired

# "69 wins, 41 losses, 24 ties on 134 labeled disagreements (disagreement rate 13.0%); ...
# (look 1 of 4, at most 0.0125)"
LINE = re.compile(
    r"(?P<wins>\d+) wins, (?P<losses>\d+) losses, (?P<ties>\d+) ties on \d+ labeled "
    r"disagreements \(disagreement rate (?P<rate>[\d.]+)%\).*?\(look (?P<look>\d+) of "
    r"(?P<looks>\d+), at most (?P<level>[\d.e-]+)\)"
)


def evidence(decision: dict[str, Any], promotion: dict[str, Any]) -> dict[str, Any] | None:
    """What the gate judged the decision on: its tally, disagreement rate, terms and the
    looks spent before its last one; None where it cannot be read (no test ran)."""
    gate = decision.get("gate")
    if gate is not None:  # kept by the run
        verdict = gate["verdict"]
        if verdict is None:
            return None
        tally = Tally(**verdict["tally"])
        null, level, used = verdict["null_share"], verdict["level"], int(verdict["looks_used"])
        rate, terms = verdict["disagreement_rate"], gate["terms"]
    else:
        found = LINE.search(decision["reason"])
        if found is None or promotion.get("margin"):
            return None  # no test ran; or a margin, whose null share the line rounds
        tally = Tally(int(found["wins"]), int(found["losses"]), int(found["ties"]))
        null, level, rate = 0.5, float(found["level"]), float(found["rate"]) / 100
        terms = {
            "margin": 0.0,
            "min_gain": promotion["min_gain"],
            "alpha": round(1 - promotion["confidence"], 10),
            "target_power": promotion["power"],
            "looks": int(found["looks"]),
        }
        used = int(found["look"])
    n = tally.decisive
    spent = n > 0 and critical_wins(n, null, level) <= n
    if gate is None and not spent and used == 1:
        # The line shows max(looks used, 1), and this look, unable to publish, was not
        # spent: "1" is read as no look before it (the end-of-job look on the gate split's
        # few disagreements never can publish at alpha / looks).
        used = 0
    return {
        "tally": tally,
        "rate": rate,
        "terms": terms,
        "looks_before": max(0, used - (1 if spent else 0)),
        "level": level,
    }


def replay(result: dict[str, Any]) -> dict[str, Any]:
    """Every decision of `result` (a results.json) with today's verdict beside the run's."""
    promotion = result["job"]["promotion"]
    rows = []
    for run in result["runs"]:
        for decision in run["decisions"]:
            seen = evidence(decision, promotion)
            row = {
                "seed": run["seed"],
                "arm": run["arm"],
                "round": decision["round"],
                "gain": decision["test_macro_f1_gain"],
                "test_accuracy_gain": decision["test_accuracy_gain"],
                "seen_gain": None,
                "published": decision["published"],
                "replayed": decision["published"],
                "level": None,
                "p_value": None,
            }
            if seen is not None:
                terms = seen["terms"]
                verdict = judge(
                    seen["tally"],
                    disagreement_rate=seen["rate"],
                    margin=terms["margin"],
                    min_gain=terms["min_gain"],
                    alpha=terms["alpha"],
                    target_power=terms["target_power"],
                    unlabeled=0,
                    looks=terms["looks"],
                    looks_used=seen["looks_before"],
                    final=True,
                )
                row.update(
                    replayed=verdict.verdict == "publish",
                    level=verdict.level,
                    p_value=verdict.p_value,
                    run_level=seen["level"],
                    decisive=seen["tally"].decisive,
                    seen_gain=verdict.gain,
                )
            rows.append(row)
    return {"decisions": rows, "summary": _rates(rows)}


def _rates(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm in [*dict.fromkeys(r["arm"] for r in rows), ALL]:
        mine = [r for r in rows if arm in (ALL, r["arm"])]
        better, not_better = by_truth(mine, lambda r: r["gain"])
        judged = [r for r in mine if r["seen_gain"] is not None]
        seen_test = ([r["seen_gain"] for r in judged], [r["test_accuracy_gain"] for r in judged])
        out[arm] = {
            "candidates": len(mine),
            "better": len(better),
            "not_better": len(not_better),
            **{
                f"{key}_of_better": sum(r[key] for r in better) for key in ("published", "replayed")
            },
            **{
                f"{key}_of_not_better": sum(r[key] for r in not_better)
                for key in ("published", "replayed")
            },
            "worst_replayed_gain": min((r["gain"] for r in mine if r["replayed"]), default=None),
            # How far the accuracy gain the gate's texts showed was from the test split's:
            # above zero, the judged texts favoured the candidate.
            "mean_seen_minus_test": _mean([a - b for a, b in zip(*seen_test, strict=True)]),
            # Its paired 95% t-interval over the decisions (None with fewer than two).
            "seen_minus_test_ci95": paired(*seen_test)["ci95"] if len(seen_test[0]) > 1 else None,
        }
    return out


def _interval(summary: dict[str, Any]) -> str:
    ci = summary.get("seen_minus_test_ci95")
    return "" if ci is None else f" [{ci[0] * 100:+.2f}, {ci[1] * 100:+.2f}]"


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 5) if values else None


def markdown(replayed: dict[str, Any]) -> str:
    lines = [
        "### The gate's decisions replayed by today's gate, on the evidence each had",
        "",
        f"Better: at least {BETTER * 100:.0f} point of test macro-F1 above the champion; not "
        "better: no gain. Replayed: today's verdict as the last look, after the looks the run "
        "spent (what follows a different decision is not replayed). Accuracy gain seen: what "
        "the labels of the texts the gate judged estimate; on test: the true one.",
        "",
        "| arm | candidates | better: published / replayed | not better: published / "
        "replayed | worst replayed Δ | accuracy gain seen − on test [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for arm, s in replayed["summary"].items():
        worst, bias = s["worst_replayed_gain"], s["mean_seen_minus_test"]
        lines.append(
            f"| `{arm}` | {s['candidates']} | {s['published_of_better']} / "
            f"{s['replayed_of_better']} of {s['better']} | {s['published_of_not_better']} / "
            f"{s['replayed_of_not_better']} of {s['not_better']} | "
            f"{'' if worst is None else f'{worst * 100:+.2f}'} | "
            f"{'' if bias is None else f'{bias * 100:+.2f}'}{_interval(s)} |"
        )
    lines += [
        "",
        "| seed | arm | round | true Δ | accuracy gain seen / on test | decisive labels | p | "
        "level then | level now | published | replayed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in replayed["decisions"]:
        p = "" if r["p_value"] is None else f"{r['p_value']:.3g}"
        then = "" if r.get("run_level") is None else f"{r['run_level']:.3g}"
        now = "" if r["level"] is None else f"{r['level']:.3g}"
        seen = "" if r["seen_gain"] is None else f"{r['seen_gain'] * 100:+.2f}"
        lines.append(
            f"| {r['seed']} | `{r['arm']}` | {r['round']} | {r['gain'] * 100:+.2f} | "
            f"{seen} / {r['test_accuracy_gain'] * 100:+.2f} | "
            f"{r.get('decisive', '')} | {p} | {then} | {now} | "
            f"{'yes' if r['published'] else 'no'} | {'yes' if r['replayed'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m research.simulate.replay",
        description="Judge every gate decision of a simulation again with today's gate, on "
        "the evidence it had; prints a markdown table (--json for the rows).",
    )
    parser.add_argument("results", type=Path, help="a simulation's results.json")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    replayed = replay(json.loads(args.results.read_text()))
    sys.stdout.write(json.dumps(replayed, indent=1) + "\n" if args.json else markdown(replayed))


if __name__ == "__main__":
    main()
