"""A stronger teacher: a bigger encoder fine-tuned on the labeled set teaches the
served-size student on the pool (study script; folded into the research package later).

Per (data set, labeled size, seed), with repro's splits and labeled draws:
- the big teacher is fine-tuned on the labeled set (dev picks its checkpoint), scores the
  pool, dev and test once; its logits are cached on disk;
- the MiniLM control(s) of each step budget train on gold alone;
- each student row learns the big teacher's logits on the pool, then gold.
Each seed's results go to OUT/<data>-<size>-<seed>.json, merged by `summary`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.core.config import packaged_base_model
from app.ml.method import student
from app.ml.modeling import Classifier
from app.ml.training import fine_tune, in_bf16, logits_in_order, scores
from research.protocol import CONTROL, KD, ReproConfig, Row
from research.seed_run import SeedRun
from research.splits import choose_length, load_data
from research.stats import paired

log = logging.getLogger("teacher_study")


@dataclass(frozen=True)
class StudyRow:
    row: Row
    pool_epochs: float = 1.0  # passes over the pool: sets the step budget
    teacher: str = "big"  # "big" or "self" (the MiniLM control, today's method)


def _rows() -> dict[str, StudyRow]:
    rows = [
        StudyRow(Row(CONTROL, "gold only, 1-pass budget")),
        StudyRow(Row("control_e3", "gold only, 3-pass budget"), 3.0),
        StudyRow(Row("control_half", "gold only, 3 layers, 1-pass budget", depth=0.5)),
        StudyRow(Row("control_half_e3", "gold only, 3 layers, 3-pass budget", depth=0.5), 3.0),
        StudyRow(
            Row("kd_self", "today's method: the MiniLM control teaches", method=KD), 1.0, "self"
        ),
        StudyRow(Row("kd_big", "big teacher, 1 pass, T=1", method=KD)),
        StudyRow(
            Row("kd_big_t2", "big teacher, 1 pass, T=2", method=KD | {"pretrain.temperature": 2.0})
        ),
        StudyRow(Row("kd_big_e3", "big teacher, 3 passes, T=1", method=KD), 3.0),
        StudyRow(
            Row(
                "kd_big_e3_t2",
                "big teacher, 3 passes, T=2",
                method=KD | {"pretrain.temperature": 2.0},
            ),
            3.0,
        ),
        StudyRow(
            Row(
                "kd_big_e3_lr",
                "big teacher, 3 passes, pre-training lr 1e-4",
                method=KD | {"pretrain.learning_rate": 1e-4},
            ),
            3.0,
        ),
        StudyRow(Row("kd_big_half", "big teacher, 3 layers, 1 pass", depth=0.5, method=KD)),
        StudyRow(
            Row("kd_big_half_e3", "big teacher, 3 layers, 3 passes", depth=0.5, method=KD), 3.0
        ),
    ]
    return {r.row.name: r for r in rows}


ROWS = _rows()


def control_of(name: str) -> str:
    r = ROWS[name]
    depth = "_half" if r.row.depth != 1.0 else ""
    epochs = "_e3" if r.pool_epochs == 3.0 else ""
    return f"control{depth}{epochs}"


def _digest(texts: list[str]) -> str:
    return hashlib.blake2b("\n".join(texts).encode(), digest_size=8).hexdigest()


def big_teacher(
    run: SeedRun, teacher_path: Path, cache: Path, steps: int, lr: float
) -> dict[str, Any]:
    """Fine-tune the big teacher on the labeled set (dev picks the checkpoint) and score
    pool, dev and test; cached per labeled set, splits and settings."""
    texts = [t for t, _ in run.pool] + run.dev[0] + run.test[0]
    key = _digest([*run.gold[0], *texts, str(teacher_path), str(steps), str(lr)])
    path = cache / f"teacher-{key}.json"
    if path.is_file():
        return dict(json.loads(path.read_text()))
    cfg = run.config
    params = cfg.params(
        run.seed,
        **{
            "finetune.max_steps": steps,
            "finetune.learning_rate": lr,
            "finetune.eval_every": 20,
            "finetune.patience": 4,
        },
    )
    started = time.monotonic()
    model, tokenizer = student(teacher_path, run.data.labels, params)
    history = fine_tune(
        model, tokenizer, *run.gold, params, run.stage("big teacher: gold"), run.dev
    )
    finetune_seconds = time.monotonic() - started
    classifier = Classifier(
        model, tokenizer, run.data.labels, cfg.max_length, cfg.truncation or "head"
    )
    started = time.monotonic()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=in_bf16(params)):
        logits = logits_in_order(classifier, texts, run.stage("big teacher labels"))
    relabel_seconds = time.monotonic() - started
    n_pool, n_dev = len(run.pool), len(run.dev[0])
    labels = run.data.labels

    def predicted(rows: list[list[float]]) -> list[str]:
        return [labels[max(range(len(r)), key=r.__getitem__)] for r in rows]

    out = {
        "teacher": str(teacher_path),
        "steps": steps,
        "learning_rate": lr,
        "selection": history.as_dict().get("selection"),
        "finetune_seconds": round(finetune_seconds, 1),
        "relabel_seconds": round(relabel_seconds, 1),
        "relabel_texts": len(texts),
        "pool_logits": logits[:n_pool],
        "dev": scores(run.dev[1], predicted(logits[n_pool : n_pool + n_dev]), labels),
        "test": scores(run.test[1], predicted(logits[n_pool + n_dev :]), labels),
        "pool_accuracy": round(
            sum(p == g for p, (_, g) in zip(predicted(logits[:n_pool]), run.pool, strict=True))
            / max(1, n_pool),
            5,
        ),
        "test_predictions": predicted(logits[n_pool + n_dev :]),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(path)
    return out


def run_seed(
    args: argparse.Namespace, config: ReproConfig, data: Any, size: int, seed: int
) -> None:
    name = f"{args.data_name}-{size}-{seed}"
    out_path = args.out / f"{name}.json"
    done: dict[str, Any] = json.loads(out_path.read_text()) if out_path.is_file() else {}
    done_rows: dict[str, Any] = done.get("rows", {})

    def stage(label: str) -> Any:
        log.info("%s", label)
        marks = [0.0]

        def progress(fraction: float, loss: float) -> None:
            if fraction >= marks[0] + 0.1 or fraction >= 1.0 > marks[0]:
                marks[0] = fraction
                log.info("  %s: %.0f%% (loss %.4f)", label, 100 * fraction, loss)

        return progress

    base = packaged_base_model()
    run = SeedRun(config, data, base, seed, size, stage)
    one_pass = run.pretrain_steps
    wanted = [r for r in args.rows if r not in done_rows]
    if not wanted and "teacher" in done:
        log.info("%s: all rows done", name)
        return
    record: dict[str, Any] = {
        "data": args.data_name,
        "labeled": size,
        "seed": seed,
        "pool": len(run.pool),
        "one_pass_steps": one_pass,
        "finetune_steps": run.finetune_steps,
        "rows": done_rows,
    }
    # The MiniLM control is also today's teacher (kd_self) and the gate's champion: it is
    # trained again only where it has no result yet or a row learns from it.
    if CONTROL not in done_rows or any(ROWS[r].teacher == "self" for r in wanted):
        run.run_row(ROWS[CONTROL].row)
        record["rows"][CONTROL] = run.results[CONTROL]
    else:
        run.teacher = object()  # type: ignore[assignment]  # the rows below bring their logits
    self_logits = dict(run.logits)
    big = big_teacher(run, args.teacher, args.cache, args.teacher_steps, args.teacher_lr)
    record["teacher"] = {
        k: v for k, v in big.items() if k not in ("pool_logits", "test_predictions")
    }
    big_logits = {t: row for (t, _), row in zip(run.pool, big["pool_logits"], strict=True)}
    for row_name in wanted:
        if row_name == CONTROL:
            continue
        spec = ROWS[row_name]
        run.pretrain_steps = math.ceil(one_pass * spec.pool_epochs)
        run.logits = dict(self_logits) if spec.teacher == "self" else dict(big_logits)
        started = time.monotonic()
        run.run_row(spec.row)
        result = run.results[row_name]
        result["pool_epochs"] = spec.pool_epochs
        record["rows"][row_name] = result
        log.info(
            "%s %s: test %.4f (%.0f s)",
            name,
            row_name,
            result["test"]["macro_f1"],
            time.monotonic() - started,
        )
        args.out.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(out_path)
    run.pretrain_steps = one_pass
    tmp = out_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(out_path)


def summary(out: Path, data_name: str, size: int) -> str:
    seeds = [json.loads(p.read_text()) for p in sorted(out.glob(f"{data_name}-{size}-*.json"))]
    if not seeds:
        return ""
    teacher = [s["teacher"]["test"]["macro_f1"] for s in seeds]
    names = sorted({n for s in seeds for n in s["rows"]}, key=list(ROWS).index)
    lines = [
        f"### {data_name}, {size} labels, seeds {[s['seed'] for s in seeds]}",
        "",
        "| row | test macro-F1 | Δ vs control [95% CI] | wins | Δ vs big teacher [95% CI] | share of teacher's gain kept |",
        "|---|---|---|---|---|---|",
    ]
    lines.append(
        f"| big teacher | {100 * statistics.fmean(teacher):.2f} ± {100 * (statistics.stdev(teacher) if len(teacher) > 1 else 0):.2f} | "
        + _cell(paired(teacher, [s["rows"][CONTROL]["test"]["macro_f1"] for s in seeds]))
        + " | — | — |"
    )
    for n in names:
        runs = [s for s in seeds if n in s["rows"] and control_of(n) in s["rows"]]
        if not runs:
            continue
        vals = [s["rows"][n]["test"]["macro_f1"] for s in runs]
        ctrl = [s["rows"][control_of(n)]["test"]["macro_f1"] for s in runs]
        teach = [s["teacher"]["test"]["macro_f1"] for s in runs]
        base_ctrl = [s["rows"][CONTROL]["test"]["macro_f1"] for s in runs]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        gap = statistics.fmean(teach) - statistics.fmean(base_ctrl)
        kept = (
            (statistics.fmean(vals) - statistics.fmean(ctrl)) / gap
            if gap > 0 and n != control_of(n)
            else None
        )
        d = paired(vals, ctrl) if n != control_of(n) else None
        lines.append(
            f"| `{n}` | {100 * statistics.fmean(vals):.2f} ± {100 * sd:.2f} | "
            + (_cell(d) if d else "— | —")
            + f" | {_diff(paired(vals, teach))} | "
            + (f"{100 * kept:.0f}%" if kept is not None else "—")
            + " |"
        )
    t = [s["teacher"] for s in seeds]
    lines += [
        "",
        f"Big teacher: fine-tune {statistics.fmean(x['finetune_seconds'] for x in t):.0f} s, "
        f"relabel {statistics.fmean(x['relabel_seconds'] for x in t):.0f} s for "
        f"{t[0]['relabel_texts']} texts "
        f"({statistics.fmean(x['relabel_seconds'] / x['relabel_texts'] for x in t) * 1e4:.0f} s per 10,000); "
        f"pool pseudo-labels {100 * statistics.fmean(x['pool_accuracy'] for x in t):.1f}% right; pool {seeds[0]['pool']} texts.",
        "",
    ]
    return "\n".join(lines)


def _diff(d: dict[str, Any]) -> str:
    ci = d["ci95"]
    span = f" [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]" if ci else ""
    return f"{100 * d['mean']:+.2f}{span}"


def _cell(d: dict[str, Any]) -> str:
    return f"{_diff(d)} | {d['wins']}/{d['n']}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["run", "summary"])
    p.add_argument("--gold-file", type=Path)
    p.add_argument("--data-name", default="demo")
    p.add_argument("--sizes", default="500")
    p.add_argument("--seeds", default="1,2,3,4,5")
    p.add_argument("--rows", default="control,kd_big")
    p.add_argument("--teacher", type=Path, default=Path("/work/teacher/all-mpnet-base-v2"))
    p.add_argument("--teacher-steps", type=int, default=160)
    p.add_argument("--teacher-lr", type=float, default=5e-5)
    p.add_argument("--out", type=Path, default=Path("/work/study/out"))
    p.add_argument("--cache", type=Path, default=Path("/work/study/cache"))
    p.add_argument("--pool-texts", type=int, default=0)
    p.add_argument("--dev-size", type=int, default=1000)
    p.add_argument("--test-size", type=int, default=2000)
    args = p.parse_args()
    args.rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        sys.exit(f"unknown rows {unknown}")
    sizes = [int(x) for x in args.sizes.split(",")]
    if args.command == "summary":
        for size in sizes:
            print(summary(args.out, args.data_name, size))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = ReproConfig(
        gold_file=args.gold_file,
        labeled_sizes=sizes,
        pool_texts=args.pool_texts,
        dev_size=args.dev_size,
        test_size=args.test_size,
    )
    data = load_data(config)
    from transformers import AutoTokenizer

    base = packaged_base_model()
    positions = int(json.loads((base / "config.json").read_text())["max_position_embeddings"])
    length, truncation = choose_length(
        config, data, AutoTokenizer.from_pretrained(str(base)), positions
    )
    config.max_length, config.truncation = length, truncation
    log.info("data %s: max_length %s, truncation %s", data.source, length, truncation)
    for size in sizes:
        for seed in [int(x) for x in args.seeds.split(",")]:
            run_seed(args, config, data, size, seed)


if __name__ == "__main__":
    main()
