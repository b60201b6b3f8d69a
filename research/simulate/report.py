"""results.md of a simulation, and served.png, from what results.json holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from research.simulate.config import ARMS_BY_NAME, SimulateConfig
from research.simulate.summary import BETTER


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def _share(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


def _interval(entry: dict[str, Any]) -> str:
    ci = entry["ci95"]
    span = f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else ""
    return f"{100 * entry['mean']:+.2f}{span}"


def _config(result: dict[str, Any]) -> SimulateConfig:
    """The run's sizes (a run from before candidates could wait rounds waited none)."""
    return SimulateConfig.from_json({"wait_rounds": 0, **result["config"]})


def markdown(result: dict[str, Any]) -> str:
    """The tables: served macro-F1 per round and arm, arms against each other at the last
    round, and the gate's decisions against the candidates' true test differences."""
    config, summary = result["config"], result["summary"]
    sizes = _config(result)
    lines = [
        "### Served model: test macro-F1 after each round",
        "",
        "| arm | " + " | ".join(sizes.step_name(n) for n in range(sizes.steps + 1)) + " |",
        "|---|" + "---|" * (sizes.steps + 1),
    ]
    for arm, rows in summary["served"].items():
        if not rows:
            continue  # a run summarized before this arm's first record was kept
        cells = [f"{_pct(r['mean'])} ± {_pct(r['sd'])}" for r in rows]
        lines.append(f"| `{arm}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Points x100, mean ± sd over seeds {config['seeds']}; round 0 is the first model "
        f"(fine-tuned on {config['initial_labels']} labels); each round brings "
        f"{config['round_texts']} texts of traffic and at most {config['budget']} labels. "
        f"Test split: {result['data']['test']} texts nothing trains, selects or gates on."
        + (
            f" After round {sizes.rounds} no job runs: {sizes.wait_rounds} more round(s) of "
            "traffic (`wait`) in which the last candidates may wait for disagreements to "
            "review."
            if sizes.wait_rounds
            else ""
        ),
        "",
        f"### Arms against each other after {sizes.step_name(sizes.steps)}",
        "",
        "| arm | against | Δ served test macro-F1 [95% CI] | wins |",
        "|---|---|---|---|",
    ]
    for d in summary["last_round"]:
        lines.append(
            f"| `{d['arm']}` | `{d['reference']}` | {_interval(d)} | {d['wins']}/{d['n']} |"
        )
    lines += [
        "",
        "Δ: the paired difference, seed by seed, with its 95% t-interval (none with one seed).",
        "",
        "### The gate's decisions against the candidates' true test differences",
        "",
        f"| arm | candidates | published | published of those ≥{100 * BETTER:.0f} point "
        "better | published of those not better | reviews per decision | decided by "
        "| worst published Δ | mean Δ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, g in summary["gate"].items():
        by = ", ".join(f"{k}: {v}" for k, v in sorted(g["decided_by"].items()))
        lines.append(
            f"| `{arm}` | {g['candidates']} | {g['published']} "
            f"| {_share(g['published_of_better'])} of {g['better']} "
            f"| {_share(g['published_of_not_better'])} of {g['not_better']} "
            f"| {g['reviews_per_decision']:.1f} | {by} "
            f"| {_pct(g['worst_published_gain'])} | {_pct(g['mean_gain'])} |"
        )
    lines += [
        "",
        "Δ: the candidate's test macro-F1 minus its champion's (x100), which the gate never "
        "sees. Decided by: `end of job` (the gate split alone decided), `reviews` (a look "
        "after a reviewed disagreement), `deadline` (the round's budget or the traffic ran out "
        "first: decided on what there was); `after waiting`: its queue was labeled out "
        f"undecided, so it waited for new traffic to review (at most {sizes.wait_rounds} "
        "round(s)); `superseded`: another candidate replaced its champion while it waited, "
        "so it was not published and is left out of the shares of those better and not "
        "better.",
        "",
        "Arms: " + "; ".join(f"`{a}`: {ARMS_BY_NAME[a].description}" for a in config["arms"]) + ".",
        "",
        f"Whole run: {result['seconds'] / 60:.1f} min in this process; the arms' own time, "
        f"added up over the processes that ran them (first models not included): "
        f"{sum(r.get('seconds', 0.0) for r in result['runs']) / 60:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


def plot_served(result: dict[str, Any], path: Path) -> None:
    """The served model's test macro-F1 per round, one line per arm, with its 95%
    interval over seeds as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for arm, rows in result["summary"]["served"].items():
        if not rows:
            continue
        x = [r["round"] for r in rows]
        mean = [100 * r["mean"] for r in rows]
        (line,) = ax.plot(x, mean, marker="o", label=arm)
        if all(r["ci95"] for r in rows):
            low = [100 * r["ci95"][0] for r in rows]
            high = [100 * r["ci95"][1] for r in rows]
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("round (0: the first model)")
    ax.set_ylabel("served model's test macro-F1 (x100)")
    seeds = len(result["config"]["seeds"])
    ax.set_title(f"Served macro-F1 per round, {seeds} seed(s), 95% intervals")
    sizes = _config(result)
    ax.set_xticks(
        range(sizes.steps + 1), [sizes.step_name(n) for n in range(sizes.steps + 1)], fontsize=8
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
