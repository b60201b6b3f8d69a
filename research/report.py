"""results.md: the experiment's tables, one per labeled-set size, then the pool-size
curve, from what results.json holds."""

from __future__ import annotations

import statistics
from typing import Any

from research.protocol import ROWS_BY_NAME


def _wins(diff: dict[str, Any] | None) -> str:
    return f"{diff['wins']}/{diff['n']}" if diff else "—"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _interval(diff: dict[str, Any] | None) -> str:
    if not diff:
        return "—"
    ci = diff["ci95"]
    span = f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else ""
    return f"{100 * diff['mean']:+.2f}{span}"


def markdown_table(result: dict[str, Any]) -> str:
    """The tables of results.md: one per labeled-set size, then the pool-size curve."""
    lines: list[str] = []
    for section in result["tables"]:
        summary = section["summary"]
        pools = [s["pool"] for s in section["seeds"]]
        lines += [
            f"### {section['labeled_size']} labeled texts",
            "",
            "| row | what it trains | test macro-F1 | Δ vs its control [95% CI] "
            "| Δ vs teacher [95% CI] | wins | test accuracy | dev macro-F1 | s per seed |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, e in summary.items():
            vs = e.get("vs_control")
            lines.append(
                f"| `{name}` | {ROWS_BY_NAME[name].description} "
                f"| {_pct(e['test_macro_f1_mean'])} ± {_pct(e['test_macro_f1_sd'])} "
                f"| {_interval(vs)} | {_interval(e.get('vs_teacher'))} "
                f"| {_wins(vs)} "
                f"| {_pct(e['test_accuracy_mean'])} ± {_pct(e['test_accuracy_sd'])} "
                f"| {_pct(e['dev_macro_f1_mean'])} ± {_pct(e['dev_macro_f1_sd'])} "
                f"| {e['seconds_mean']:.0f} |"
            )
        lines += [
            "",
            f"Points x100, mean ± sd over seeds {result['config']['seeds']}; Δ: the paired "
            f"difference in test macro-F1, seed by seed, with its 95% t-interval; wins: seeds "
            f"where the row beat its control. Step budget per row: "
            f"{section['seeds'][0]['steps_budget']} optimizer steps of "
            f"{result['job']['batch_size']} texts. Pool: {pools[0]['texts']} in-domain "
            f"texts, pseudo-labels "
            f"{100 * statistics.fmean(p['pseudo_label_accuracy'] for p in pools):.1f}% right.",
            "",
        ]
        gates = {n: e["gate_vs_teacher"] for n, e in summary.items() if "gate_vs_teacher" in e}
        if gates:
            lines += [
                "| row | dev gain vs teacher | published by the gate (95%) "
                "| published by 'higher on dev' | test answers changed |",
                "|---|---|---|---|---|",
            ]
            for name, g in gates.items():
                lines.append(
                    f"| `{name}` | {100 * g['dev_gain_mean']:+.2f} "
                    f"| {g['published_better']}/{g['n']} "
                    f"| {g['published_higher_on_dev']}/{g['n']} "
                    f"| {100 * g['test_changed_share_mean']:.1f}% |"
                )
            lines.append("")
    curve = result.get("pool_curve")
    if curve and curve["points"]:
        lines += [
            f"### Pool size and mix ({result['tables'][0]['labeled_size']} labeled texts, "
            f"`{curve['row']}`, same steps)",
            "",
            "| pool | test macro-F1 | Δ vs its control [95% CI] |",
            "|---|---|---|",
        ]
        for name, p in curve["points"].items():
            lines.append(
                f"| {name.replace('_', ' ')} | {_pct(p['test_macro_f1_mean'])} ± "
                f"{_pct(p['test_macro_f1_sd'])} | {_interval(p['vs_control'])} |"
            )
        lines.append("")
    lines.append(f"Whole run: {result['seconds'] / 60:.1f} min.")
    return "\n".join(lines) + "\n"
