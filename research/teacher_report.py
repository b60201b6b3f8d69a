"""The stronger-teacher study's tables (results.md) and numbers (results.json), merged
from the per-seed files `python -m research.teacher run` writes."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from research.protocol import CONTROL
from research.stats import paired

if TYPE_CHECKING:
    from research.teacher import StudyRow


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(seeds: list[dict[str, Any]], rows: Mapping[str, StudyRow]) -> dict[str, Any]:
    """Per row: test macro-F1 over seeds, the paired difference against its control and
    against the big teacher, and the share of the teacher's gain over the 1-pass control
    that the row keeps (its own gain over its control, over the teacher's)."""
    teacher = [s["teacher"]["test"]["macro_f1"] for s in seeds]
    control = [s["rows"][CONTROL]["test"]["macro_f1"] for s in seeds]
    out: dict[str, Any] = {
        "seeds": [s["seed"] for s in seeds],
        "teacher": {
            "test_macro_f1": _mean_sd(teacher),
            "vs_control": paired(teacher, control),
            "finetune_seconds": statistics.fmean(s["teacher"]["finetune_seconds"] for s in seeds),
            "relabel_seconds_per_10k": statistics.fmean(
                1e4 * s["teacher"]["relabel_seconds"] / s["teacher"]["relabel_texts"] for s in seeds
            ),
            "pool_accuracy": statistics.fmean(s["teacher"]["pool_accuracy"] for s in seeds),
        },
        "pool": seeds[0]["pool"],
        "rows": {},
    }
    for name, spec in rows.items():
        runs = [s for s in seeds if name in s["rows"] and spec.control in s["rows"]]
        if not runs:
            continue
        values = [s["rows"][name]["test"]["macro_f1"] for s in runs]
        entry: dict[str, Any] = {
            "description": spec.row.description,
            "n": len(runs),
            "test_macro_f1": _mean_sd(values),
            "dev_macro_f1": _mean_sd([s["rows"][name]["dev"]["macro_f1"] for s in runs]),
            "vs_teacher": paired(values, [s["teacher"]["test"]["macro_f1"] for s in runs]),
            "seconds": statistics.fmean(s["rows"][name]["seconds"] for s in runs),
        }
        if name != spec.control:
            own = [s["rows"][spec.control]["test"]["macro_f1"] for s in runs]
            entry["control"] = spec.control
            entry["vs_control"] = paired(values, own)
            gap = statistics.fmean(
                s["teacher"]["test"]["macro_f1"] - s["rows"][CONTROL]["test"]["macro_f1"]
                for s in runs
            )
            entry["share_of_teacher_gain"] = entry["vs_control"]["mean"] / gap if gap > 0 else None
        out["rows"][name] = entry
    return out


def _pts(x: float) -> str:
    return f"{100 * x:.2f}"


def _diff(d: Mapping[str, Any] | None) -> str:
    if not d:
        return "—"
    ci = d.get("ci95")
    span = f" [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]" if ci else ""
    return f"{100 * d['mean']:+.2f}{span}"


def markdown(key: tuple[str, int], summary: dict[str, Any]) -> str:
    """One table: a data set at one labeled-set size."""
    data, size = key
    t = summary["teacher"]
    mean, sd = t["test_macro_f1"]
    lines = [
        f"### {data}, {size} labels (seeds {', '.join(map(str, summary['seeds']))})",
        "",
        "| row | what it trains | test macro-F1 | Δ vs its control [95% CI] | wins "
        "| Δ vs the big teacher [95% CI] | share of the teacher's gain kept |",
        "|---|---|---|---|---|---|---|",
        f"| big teacher | the teacher encoder fine-tuned on the labeled set | {_pts(mean)} "
        f"± {_pts(sd)} | {_diff(t['vs_control'])} (vs `control`) "
        f"| {t['vs_control']['wins']}/{t['vs_control']['n']} | — | — |",
    ]
    for name, e in summary["rows"].items():
        mean, sd = e["test_macro_f1"]
        vs = e.get("vs_control")
        share = e.get("share_of_teacher_gain")
        wins = f"{vs['wins']}/{vs['n']}" if vs else "—"
        lines.append(
            f"| `{name}` | {e['description']} | {_pts(mean)} ± {_pts(sd)} "
            f"| {_diff(vs)} | {wins} "
            f"| {_diff(e['vs_teacher'])} | {'—' if share is None else f'{100 * share:.0f}%'} |"
        )
    lines += [
        "",
        f"Points x100, mean ± sd over seeds; Δ: paired by seed, with the 95% t-interval. Pool: "
        f"{summary['pool']} in-domain texts, the big teacher's pseudo-labels "
        f"{100 * t['pool_accuracy']:.1f}% right. The big teacher's cost here: "
        f"{t['finetune_seconds']:.0f} s to fine-tune, {t['relabel_seconds_per_10k']:.0f} s "
        "per 10,000 texts scored.",
        "",
    ]
    return "\n".join(lines)


def write_summary(out: Path, rows: Mapping[str, StudyRow]) -> str:
    """Merge every per-seed file under `out` into results.json and results.md there;
    returns the Markdown."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for path in sorted(out.glob("*-*-*.json")):
        seed = json.loads(path.read_text())
        if "teacher" in seed and CONTROL in seed.get("rows", {}):
            groups[(seed["data"], seed["labeled"])].append(seed)
    summaries = {
        key: summarize(sorted(v, key=lambda s: s["seed"]), rows) for key, v in groups.items()
    }
    text = "\n".join(markdown(key, s) for key, s in sorted(summaries.items()))
    result = {
        f"{data}-{size}": {"summary": summaries[(data, size)], "seeds": groups[(data, size)]}
        for data, size in sorted(summaries)
    }
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "results.md").write_text(text)
    return text
