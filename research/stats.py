"""The statistics of the experiment: per row, the mean and sd over seeds and the paired
difference against its control and the teacher with a 95% t-interval; the row a job
should default to; the pool-size curve."""

from __future__ import annotations

import math
import statistics
from typing import Any

from research.protocol import CONTROL, ROWS_BY_NAME, ReproConfig


def pool_point_name(in_domain: int, out_of_domain: int) -> str:
    return f"{in_domain}_in" + (f"+{out_of_domain}_ood" if out_of_domain else "")


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t (two-sided 95% intervals), without SciPy."""
    table = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]
    table += [2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086]
    if df < 1:
        return math.inf
    return table[df - 1] if df <= len(table) else 1.96 + 2.4 / df


def paired(values: list[float], reference: list[float]) -> dict[str, Any]:
    """Mean paired difference (per seed) with its 95% t-interval."""
    diffs = [a - b for a, b in zip(values, reference, strict=True)]
    mean = statistics.fmean(diffs)
    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    half = t_quantile_975(len(diffs) - 1) * sd / math.sqrt(len(diffs)) if len(diffs) > 1 else 0
    return {
        "mean": round(mean, 5),
        "sd": round(sd, 5),
        "ci95": [round(mean - half, 5), round(mean + half, 5)] if len(diffs) > 1 else None,
        "n": len(diffs),
        "wins": sum(d > 0 for d in diffs),
    }


def summarize(seeds: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per row: mean and sd over seeds, and the paired difference against its control
    and against the teacher, with 95% intervals."""
    summary: dict[str, dict[str, Any]] = {}
    for name in names:
        runs = [s for s in seeds if name in s["rows"]]
        if not runs:
            continue
        entry: dict[str, Any] = {"seeds": len(runs)}
        for split in ("test", "dev"):
            for metric in ("macro_f1", "accuracy"):
                values = [s["rows"][name][split][metric] for s in runs]
                entry[f"{split}_{metric}_mean"] = round(statistics.fmean(values), 5)
                entry[f"{split}_{metric}_sd"] = (
                    round(statistics.stdev(values), 5) if len(values) > 1 else 0.0
                )
        entry["seconds_mean"] = round(statistics.fmean(s["rows"][name]["seconds"] for s in runs), 1)
        row = ROWS_BY_NAME.get(name.split("@")[0])
        control = row.control if row else CONTROL
        for label, reference in (("vs_control", control), ("vs_teacher", CONTROL)):
            both = [s for s in runs if reference in s["rows"]]
            if reference == name or not both:
                continue
            entry[label] = {
                "row": reference,
                **paired(
                    [s["rows"][name]["test"]["macro_f1"] for s in both],
                    [s["rows"][reference]["test"]["macro_f1"] for s in both],
                ),
            }
        gates = [s["rows"][name]["vs_teacher"] for s in runs if "vs_teacher" in s["rows"][name]]
        if gates:
            entry["gate_vs_teacher"] = {
                "dev_gain_mean": round(statistics.fmean(g["dev_gain"] for g in gates), 5),
                "published_better": sum(g["dev_gain_lower95"] > 0 for g in gates),
                "published_higher_on_dev": sum(g["dev_gain"] > 0 for g in gates),
                "test_changed_share_mean": round(
                    statistics.fmean(g["test_changed_share"] for g in gates), 5
                ),
                "n": len(gates),
            }
        summary[name] = entry
    return summary


def best_method(summary: dict[str, dict[str, Any]]) -> str | None:
    """The full-depth method row (the depth a job serves by default) with the largest mean
    dev macro-F1 gain over its control: dev picks, test reports. The smaller students are
    an operator's choice of speed, compared with their own control and the teacher."""
    methods = [
        n
        for n in summary
        if ROWS_BY_NAME[n].method is not None
        and ROWS_BY_NAME[n].depth == 1.0
        and ROWS_BY_NAME[n].control in summary
    ]
    return max(
        methods,
        key=lambda n: (
            summary[n]["dev_macro_f1_mean"] - summary[ROWS_BY_NAME[n].control]["dev_macro_f1_mean"]
        ),
        default=None,
    )


def summarize_curve(seeds: list[dict[str, Any]], config: ReproConfig) -> dict[str, Any]:
    """The pool-size curve: each point's test macro-F1 and its paired difference against
    the row's control (the same seeds)."""
    row = ROWS_BY_NAME[config.curve_row]
    points: dict[str, Any] = {}
    names = [pool_point_name(i, o) for i, o in config.pool_curve]

    def point(runs: list[dict[str, Any]], values: list[float]) -> dict[str, Any]:
        control = [s["rows"][row.control]["test"]["macro_f1"] for s in runs]
        return {
            "test_macro_f1_mean": round(statistics.fmean(values), 5),
            "test_macro_f1_sd": round(statistics.stdev(values), 5) if len(values) > 1 else 0.0,
            "vs_control": {"row": row.control, **paired(values, control)},
        }

    for name in names:
        runs = [s for s in seeds if name in s.get("pool_curve", {})]
        if runs:
            points[name] = point(runs, [s["pool_curve"][name]["test"]["macro_f1"] for s in runs])
    if all(row.name in s["rows"] for s in seeds):
        values = [s["rows"][row.name]["test"]["macro_f1"] for s in seeds]
        points[f"{seeds[0]['pool']['texts']}_in (all)"] = point(seeds, values)
    return {"row": row.name, "points": points}
