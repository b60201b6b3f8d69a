"""The report of `python -m bench`: the serving goals against what a run measured, the run
as a Markdown table, and that table written into docs/benchmarks.md."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from app.ml.serving_forms import Form
from bench.forms import log
from bench.layouts import best_within


def goals(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The serving goals against what this run measured (only those its parts measured)."""
    return [*_throughput_goals(r), *_form_goals(r), *_other_goals(r)]


def _goal(name: str, value: float, target: str, met: bool) -> dict[str, Any]:
    return {"goal": name, "measured": round(value, 2), "target": target, "met": met}


def _label_rows(r: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {row["concurrency"]: row for row in r.get("service", {}).get("/label", [])}


def _throughput_goals(r: dict[str, Any]) -> list[dict[str, Any]]:
    """/label against the machine's ceiling, the texts in flight and the naive baseline."""
    out: list[dict[str, Any]] = []
    label_rows = _label_rows(r)
    c32 = label_rows.get(32) or label_rows.get(8)
    ceiling = r.get("ceiling", {})
    if ceiling and c32:
        ratio = c32["texts_per_s"] / ceiling["best_texts_per_s"]
        name = f"/label c={c32['concurrency']} / machine ceiling ({ceiling['served']})"
        out.append(_goal(name, ratio, ">= 0.90", ratio >= 0.9))
        if "layouts" in ceiling:
            # The same, against the passes c one-text requests can fill at once.
            reachable = best_within(
                ceiling["layouts"][ceiling["served"]]["rows"], c32["concurrency"]
            )
            ratio = c32["texts_per_s"] / reachable["texts_per_s"]
            name = (
                f"/label c={c32['concurrency']} / ceiling with {c32['concurrency']} texts in "
                f"flight ({reachable['processes']} x {reachable['threads']}, batch "
                f"{reachable['batch']}: {reachable['texts_per_s']})"
            )
            out.append(_goal(name, ratio, ">= 0.90", ratio >= 0.9))
    return out


def _form_goals(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The served form's speed against fp32 and its quality; self-tuned bounds."""
    out: list[dict[str, Any]] = []
    ceiling = r.get("ceiling", {})
    if "fp32_best_texts_per_s" in ceiling:
        ratio = ceiling["best_texts_per_s"] / ceiling["fp32_best_texts_per_s"]
        name = f"served form ({ceiling['served']}) / fp32 ONNX Runtime, machine ceilings"
        out.append(_goal(name, ratio, ">= 1.7", ratio >= 1.7))
    # The quality of the form served: int8's or bf16's drop from fp32 on the dev set.
    kind = next((k for k in ("int8", "bf16") if k in ceiling.get("served", "")), None)
    drop = (ceiling.get("forms_record") or {}).get(f"{kind}_drop_points")
    if drop is not None:
        out.append(
            _goal(f"{kind} dev macro-F1 drop from fp32 (points)", drop, "<= 0.5", drop <= 0.5)
        )
    tuned = r.get("tuning", {}).get("rows", [])
    auto = [row["texts_per_s"] for row in tuned if row["setting"].startswith("self-tuned")]
    fixed = [row["texts_per_s"] for row in tuned if row["setting"].startswith("fixed")]
    if auto and fixed:
        ratio = statistics.fmean(auto) / max(fixed)
        out.append(
            _goal("self-tuned / best fixed bounds (texts/s)", ratio, ">= 0.97", ratio >= 0.97)
        )
    return out


def _other_goals(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Against the naive baseline, latency alone, the swap, training, the student."""
    out: list[dict[str, Any]] = []
    label_rows = _label_rows(r)
    c32 = label_rows.get(32) or label_rows.get(8)
    if "naive" in r and c32:
        ratio = c32["texts_per_s"] / r["naive"]["texts_per_s"]
        out.append(_goal(f"/label c={c32['concurrency']} / naive", ratio, ">= 2", ratio >= 2))
    if "ceiling" in r and 1 in label_rows:
        extra = label_rows[1]["p50_ms"] - r["ceiling"]["batch1_ms"]
        out.append(_goal("c=1 p50 - batch-1 forward (ms)", extra, "<= 5", extra <= 5))
    if "swap" in r:
        s = r["swap"]
        out.append(_goal("failed requests during swap", s["failed"], "0", s["failed"] == 0))
        ratio = s["p99_during_swap_ms"] / s["p99_steady_ms"]
        out.append(_goal("swap p99 / steady p99", ratio, "<= 2", ratio <= 2))
    if "training" in r:
        t = r["training"]
        speedup = t["speedup"]
        out.append(_goal("joint step / naive step (tokens/s)", speedup, ">= 2", speedup >= 2))
    forms = r.get("ceiling", {}).get("forms", {})
    student = next((f for n, f in forms.items() if n.startswith("student") and "onnx" in n), None)
    full = forms.get("onnxruntime")
    if student and full and "unavailable" not in student and "unavailable" not in full:
        ratio = student["best_texts_per_s"] / full["best_texts_per_s"]
        out.append(
            _goal("half-layer student / full model (texts/s)", ratio, "about 2", ratio >= 1.6)
        )
    return out


def load_row(label: str, summary: dict[str, Any]) -> str:
    """One table row from a LoadResult summary."""
    s = summary
    return f"| {label} | {s['texts_per_s']} | {s['p50_ms']} | {s['p99_ms']} | {s['failed']} |"


def render(r: dict[str, Any]) -> str:
    """This run as Markdown: the main table, then each part's details and the goals."""
    extra = [
        "",
        *_forms_table(r),
        *_layouts_table(r),
        *_cpu_split(r),
        *_tuning_table(r),
        *_swap_and_training(r),
        *_teacher_table(r),
        *_goals_table(r),
    ]
    return "\n".join(_main_table(r) + extra)


def _teacher_table(r: dict[str, Any]) -> list[str]:
    """Part 8: the teacher served as the model, beside the model the service serves."""
    t = r.get("teacher")
    if not t:
        return []
    if "unavailable" in t:
        return ["", f"Teacher (part 8): {t['unavailable']}."]
    lines = [
        "",
        f"Teacher served as the model (part 8): `{t['encoder']}`, {t['layers']} layers",
        "",
        "| model | form | processes x threads | batch | texts/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for form, best in t["forms"].items():
        lines.append(
            f"| teacher | {form} | {best['processes']} x {best['threads']} | {best['batch']} "
            f"| {best['texts_per_s']} |"
        )
    served = (r.get("ceiling") or {}).get("best_layout")
    if served:
        name = r["ceiling"].get("served", "served form")
        lines.append(
            f"| served model | {name} | {served['processes']} x {served['threads']} "
            f"| {served['batch']} | {served['texts_per_s']} |"
        )
        ratio = served["texts_per_s"] / max(1e-9, t["fastest_texts_per_s"])
        lines += ["", f"The served model runs {ratio:.1f}x the teacher's fastest form here."]
    return lines


def _main_table(r: dict[str, Any]) -> list[str]:
    lines = [
        "| measurement | texts/s | p50 ms | p99 ms | failed |",
        "| --- | --- | --- | --- | --- |",
    ]
    if "ceiling" in r and "layouts" in r["ceiling"]:
        c = r["ceiling"]
        b = c["best_layout"]
        f = c["layouts"][Form.ONNX_FP32]["best"]
        lines += [
            f"| ceiling of the machine: bare forward, {c['served']}, {b['processes']} x "
            f"{b['threads']} threads, batch {b['batch']} | {c['best_texts_per_s']} | | | |",
            f"| ceiling of the machine: bare forward, {Form.ONNX_FP32}, {f['processes']} x "
            f"{f['threads']} threads, batch {f['batch']} | {f['texts_per_s']} | | | |",
            f"| bare forward, {c['served']}, batch 1, one process of {b['threads']} "
            f"thread(s) | {round(1000 / c['batch1_ms'], 1)} | {c['batch1_ms']} | | |",
        ]
    elif "ceiling" in r:
        c = r["ceiling"]
        lines += [
            f"| ceiling: bare forward, {c['served']}, batch {c['best_batch']} "
            f"| {c['best_texts_per_s']} | | | |",
            f"| ceiling: bare forward, {c['served']}, batch 1 "
            f"| {c['by_batch'][1]['texts_per_s']} | {c['batch1_ms']} | | |",
        ]
    if "naive" in r:
        n = r["naive"]
        lines.append(load_row(f"naive pipeline, concurrency {n['concurrency']}", n))
    for path, rows in r.get("service", {}).items():
        for row in rows:
            lines.append(load_row(f"ours {path}, concurrency {row['concurrency']}", row))
    if "swap" in r:
        s = r["swap"]
        lines.append(load_row(f"swap under load (2 API processes, c={s['concurrency']})", s))
    for name, b in r.get("while_training", {}).items():
        label = "c=8, no job" if name == "idle" else f"c=8 while a job trains, worker {name}"
        lines.append(load_row(label, b))
    return lines


def _forms_table(r: dict[str, Any]) -> list[str]:
    if "ceiling" not in r:
        return []
    lines = ["| form of the model | best batch | texts/s | batch 1 ms | test macro-F1 |"]
    lines += ["| --- | --- | --- | --- | --- |"]
    for name, f in r["ceiling"]["forms"].items():
        if "unavailable" in f:
            lines.append(f"| {name} | unavailable: {f['unavailable']} | | | |")
        else:
            setup = f" (setup {f['setup_seconds']} s)" if f["setup_seconds"] else ""
            f1 = f["test_macro_f1"]
            quality = "speed only (quality: Does it work?)" if f1 is None else f1
            lines.append(
                f"| {name}{setup} | {f['best_batch']} | {f['best_texts_per_s']} "
                f"| {f['batch1_ms']} | {quality} |"
            )
    return [*lines, ""]


def _layouts_table(r: dict[str, Any]) -> list[str]:
    if "layouts" not in r.get("ceiling", {}):
        return []
    lines = ["| form | processes x threads | batch | texts/s |", "| --- | --- | --- | --- |"]
    for name, table in r["ceiling"]["layouts"].items():
        for row in table["rows"]:
            lines.append(
                f"| {name} | {row['processes']} x {row['threads']} | {row['batch']} "
                f"| {row['texts_per_s']} |"
            )
    record = r["ceiling"].get("forms_record") or {}
    return [
        *lines,
        "",
        f"- served: {r['ceiling']['served']} ({r['ceiling']['served_reason']}); dev "
        f"macro-F1 fp32 {record.get('fp32', {}).get('dev_macro_f1')}, int8 "
        f"{record.get('int8', {}).get('dev_macro_f1')}, bf16 "
        f"{record.get('bf16', {}).get('dev_macro_f1', 'not scored')} "
        f"({record.get('dev_n')} texts)",
        "",
    ]


def _cpu_split(r: dict[str, Any]) -> list[str]:
    split_row = next(
        (row for row in r.get("service", {}).get("/label", []) if "cpu_ms_per_request" in row),
        None,
    )
    if not split_row:
        return []
    split = split_row["cpu_ms_per_request"]
    parts = ", ".join(f"{k} {v}" for k, v in split.items() if k != "server total")
    cores = r["machine"]["cpus"]
    # Were the cores busy with nothing else, what this much CPU per request allows.
    bound = round(1000 * cores / (split["server total"] + split["load client"]), 1)
    return [
        f"- CPU per /label request at concurrency {split_row['concurrency']} (ms, every "
        f"thread of every API process, and the client): {parts}; server total "
        f"{split['server total']}. {cores} cores at that cost serve at most {bound} "
        "texts/s.",
        "",
    ]


def _tuning_table(r: dict[str, Any]) -> list[str]:
    if "tuning" not in r:
        return []
    lines = [
        f"| /label c={r['tuning']['rows'][0]['concurrency']}, a fresh API each "
        "| processes x threads | bounds (texts, tokens) | texts/s | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["tuning"]["rows"]:
        bounds = row["batching"]
        lines.append(
            f"| {row['setting']} | {row['api_processes']} x {row['threads']} "
            f"| {bounds['max_texts']}, {bounds['max_tokens']} ({bounds['source']}) "
            f"| {row['texts_per_s']} | {row['p50_ms']} | {row['p99_ms']} |"
        )
    return [*lines, ""]


def _swap_and_training(r: dict[str, Any]) -> list[str]:
    lines = []
    if "swap" in r:
        s = r["swap"]
        lines.append(
            f"- swap: p99 steady {s['p99_steady_ms']} ms, during the swap "
            f"{s['p99_during_swap_ms']} ms; publish to first answer from "
            f"v{s['published_version']}: "
            + ", ".join(f"{t} s" for t in s["seconds_to_first_new_answer"].values())
        )
    if "training" in r:
        t = r["training"]
        lines.append(
            f"- training step (batch {t['batch']}): ours {t['ours']['tokens_per_s']} tokens/s, "
            f"naive {t['naive']['tokens_per_s']} tokens/s, {t['speedup']}x"
            + (
                f"; ours under bf16 autocast {t['ours_bf16']['tokens_per_s']} tokens/s "
                f"({t['speedup_bf16']}x)"
                if "ours_bf16" in t
                else ""
            )
        )
    return lines


def _goals_table(r: dict[str, Any]) -> list[str]:
    if not r.get("goals"):
        return []
    lines = ["", "| goal | measured | target | met |", "| --- | --- | --- | --- |"]
    for g in r["goals"]:
        lines.append(
            f"| {g['goal']} | {g['measured']} | {g['target']} | {'yes' if g['met'] else 'NO'} |"
        )
    return lines


TABLE_START = "<!-- bench:start (written by make bench) -->"
TABLE_END = "<!-- bench:end -->"


def write_table(r: dict[str, Any], page: Path) -> None:
    """Put this run's table between the bench markers of docs/benchmarks.md."""
    text = page.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        log(f"{page} has no bench markers; table not written there")
        return
    m = r["machine"]
    header = (
        f"One run, {r['finished']}, on {m['cpu']} ({m['cpus']} cores, torch {m['torch']}, "
        f"serving {r.get('ceiling', {}).get('served', '?')}; the client shares the cores):"
    )
    before, rest = text.split(TABLE_START, 1)
    after = rest.split(TABLE_END, 1)[1]
    page.write_text(f"{before}{TABLE_START}\n{header}\n\n{render(r)}\n{TABLE_END}{after}")
    log(f"wrote the table into {page}")
