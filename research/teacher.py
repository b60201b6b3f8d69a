"""A stronger teacher (`python -m research.teacher`): a bigger encoder fine-tuned on the
labeled set teaches the served-size student on the pool, against the compute-matched
gold-only control of the same student.

The question: the serving model teaching its own successor caps the student at about
its own quality (docs/ablation.md). Does a better teacher, the one the service can
afford (all-mpnet-base-v2, about five times MiniLM's compute per token), carry its gain
into the student that serves? Per labeled-set size and seed, with repro's splits and
labeled draws (research/splits.py, research/seed_run.py):

1. `control`: MiniLM fine-tuned on the labeled set alone for as many optimizer steps as
   a student row takes in all, keeping its best dev checkpoint (also today's teacher);
2. the big teacher: the teacher encoder fine-tuned on the labeled set (dev picks its
   checkpoint), which scores the pool, dev and test once; its logits are cached on disk
   per labeled set, so every row and every rerun reuses them;
3. each student row learns the big teacher's logits on the pool (the job's own
   pre-training, app/ml/method.py), then the labeled set, with its step budget matched
   by a control of the same depth and budget;
4. test macro-F1, the paired difference against the control, the teacher's own score
   and the share of the teacher's gain over the control that the student keeps.

Each seed's results go to OUT/<data>-<size>-<seed>.json as they come, so the study runs
in parts (`--rows`, `--seeds`, several processes) and `summary` merges them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.config import packaged_base_model
from app.ml.method import student
from app.ml.modeling import Classifier
from app.ml.training import fine_tune, in_bf16, logits_in_order, scores
from research.protocol import CONTROL, KD, ReproConfig, Row
from research.seed_run import SeedRun
from research.splits import ReproData, choose_length, load_data

log = logging.getLogger("research.teacher")

DEFAULT_TEACHER = Path("data/encoders/all-mpnet-base-v2")


@dataclass(frozen=True)
class StudyRow:
    """A row: what it trains, how many passes over the pool its budget holds, who teaches
    it (`big`: the fine-tuned teacher encoder; `self`: the MiniLM control), and how many
    times the protocol's gold fine-tuning it runs after the pool."""

    row: Row
    pool_epochs: float = 1.0
    teacher: str = "big"
    finetune_passes: float = 1.0

    @property
    def control(self) -> str:
        """The gold-only row of the same depth and step budget."""
        depth = "_half" if self.row.depth != 1.0 else ""
        epochs = "" if self.pool_epochs == 1.0 else f"_e{self.pool_epochs:g}"
        finetune = "" if self.finetune_passes == 1.0 else f"_ft{self.finetune_passes:g}"
        return f"{CONTROL}{depth}{epochs}{finetune}"


T2 = {"pretrain.temperature": 2.0}
STUDY_ROWS = [
    StudyRow(Row(CONTROL, "gold only, MiniLM-L6, the 1-pass budget (also today's teacher)")),
    StudyRow(Row("control_e3", "gold only, MiniLM-L6, the 3-pass budget"), 3.0),
    StudyRow(Row("control_half", "gold only, 3 layers, the 1-pass budget", depth=0.5)),
    StudyRow(Row("control_half_e3", "gold only, 3 layers, the 3-pass budget", depth=0.5), 3.0),
    StudyRow(Row("kd_self", "today's method: the MiniLM control teaches", method=KD), 1.0, "self"),
    StudyRow(Row("kd_big", "the big teacher teaches, 1 pass over the pool, T=1", method=KD)),
    StudyRow(Row("kd_big_t2", "the big teacher, 1 pass, T=2", method=KD | T2)),
    StudyRow(Row("kd_big_e3", "the big teacher, 3 passes, T=1", method=KD), 3.0),
    StudyRow(Row("kd_big_e3_t2", "the big teacher, 3 passes, T=2", method=KD | T2), 3.0),
    StudyRow(
        Row(
            "kd_big_e3_lr",
            "the big teacher, 3 passes, pre-training lr 1e-4",
            method=KD | {"pretrain.learning_rate": 1e-4},
        ),
        3.0,
    ),
    # After one pass over the pool the taught student's gold fine-tuning was still
    # improving at its last step: the same with three times the gold fine-tuning.
    StudyRow(
        Row("control_ft3", "gold only, MiniLM-L6, the 1-pass budget + 3x fine-tuning"),
        finetune_passes=3.0,
    ),
    StudyRow(
        Row("kd_big_ft3", "the big teacher, 1 pass, then 3x the gold fine-tuning", method=KD),
        finetune_passes=3.0,
    ),
    # A class the teacher never predicts reaches the student only through gold fine-tuning:
    # three passes over the pool, then three times the gold fine-tuning.
    StudyRow(
        Row("control_e3_ft3", "gold only, MiniLM-L6, the 3-pass budget + 3x fine-tuning"),
        3.0,
        finetune_passes=3.0,
    ),
    StudyRow(
        Row("kd_big_e3_ft3", "the big teacher, 3 passes, then 3x the gold fine-tuning", method=KD),
        3.0,
        finetune_passes=3.0,
    ),
    StudyRow(Row("kd_big_half", "the big teacher, 3 layers, 1 pass", depth=0.5, method=KD)),
    StudyRow(
        Row("kd_big_half_e3", "the big teacher, 3 layers, 3 passes", depth=0.5, method=KD), 3.0
    ),
    StudyRow(
        Row("kd_big_half_e3_t2", "the big teacher, 3 layers, 3 passes, T=2", 0.5, KD | T2), 3.0
    ),
]
ROWS = {r.row.name: r for r in STUDY_ROWS}


def _digest(parts: list[str]) -> str:
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=8).hexdigest()


def big_teacher(
    run: SeedRun, teacher_path: Path, cache: Path, steps: int, learning_rate: float
) -> dict[str, Any]:
    """The teacher encoder fine-tuned on the labeled set for `steps` (dev picks the
    checkpoint), with its logits on the pool, dev and test and what it cost; cached per
    labeled set, splits, encoder and recipe."""
    texts = [t for t, _ in run.pool] + run.dev[0] + run.test[0]
    key = _digest([*run.gold[0], *texts, str(teacher_path), str(steps), str(learning_rate)])
    path = cache / f"teacher-{key}.json"
    if path.is_file():
        return dict(json.loads(path.read_text()))
    config = run.config
    params = config.params(
        run.seed,
        **{
            "finetune.max_steps": steps,
            "finetune.learning_rate": learning_rate,
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
    truncation = config.truncation or "head"
    classifier = Classifier(model, tokenizer, run.data.labels, config.max_length, truncation)
    started = time.monotonic()
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=in_bf16(params)):
        logits = logits_in_order(classifier, texts, run.stage("big teacher labels"))
    relabel_seconds = time.monotonic() - started
    n_pool, n_dev = len(run.pool), len(run.dev[0])
    labels = run.data.labels

    def predicted(rows: list[list[float]]) -> list[str]:
        return [labels[max(range(len(r)), key=r.__getitem__)] for r in rows]

    pool_right = predicted(logits[:n_pool])
    out = {
        "teacher": str(teacher_path),
        "steps": steps,
        "learning_rate": learning_rate,
        "selection": history.as_dict().get("selection"),
        "finetune_seconds": round(finetune_seconds, 1),
        "relabel_seconds": round(relabel_seconds, 1),
        "relabel_texts": len(texts),
        "pool_logits": logits[:n_pool],
        "dev": scores(run.dev[1], predicted(logits[n_pool : n_pool + n_dev]), labels),
        "test": scores(run.test[1], predicted(logits[n_pool + n_dev :]), labels),
        "pool_accuracy": round(
            sum(p == g for p, (_, g) in zip(pool_right, run.pool, strict=True)) / max(1, n_pool),
            5,
        ),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(path)
    return out


def _write(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def run_seed(
    args: argparse.Namespace, config: ReproConfig, data: ReproData, size: int, seed: int
) -> None:
    """The rows asked for one labeled size and seed, skipping those already in its file."""
    out_path = args.out / f"{args.data_name}-{size}-{seed}.json"
    done: dict[str, Any] = json.loads(out_path.read_text()) if out_path.is_file() else {}
    done_rows: dict[str, Any] = done.get("rows", {})
    run = SeedRun(config, data, args.base_model, seed, size, _stage)
    one_pass, one_finetune = run.pretrain_steps, run.finetune_steps
    wanted = [r for r in args.rows if r not in done_rows]
    if not wanted and "teacher" in done:
        log.info("%s: every row is done", out_path.name)
        return
    record: dict[str, Any] = {
        "data": args.data_name,
        "source": data.source,
        "labeled": size,
        "seed": seed,
        "pool": len(run.pool),
        "one_pass_steps": one_pass,
        "finetune_steps": run.finetune_steps,
        "rows": done_rows,
    }
    # The MiniLM control is trained again only where it has no result yet or a row learns
    # from it (kd_self): it is today's teacher.
    if CONTROL not in done_rows or any(ROWS[r].teacher == "self" for r in wanted):
        run.run_row(ROWS[CONTROL].row)
        record["rows"][CONTROL] = run.results[CONTROL]
    self_logits = dict(run.logits)
    big = big_teacher(run, args.teacher, args.cache, args.teacher_steps, args.teacher_lr)
    record["teacher"] = {k: v for k, v in big.items() if k != "pool_logits"}
    big_logits = {t: row for (t, _), row in zip(run.pool, big["pool_logits"], strict=True)}
    for name in wanted:
        if name == CONTROL:
            continue
        spec = ROWS[name]
        run.pretrain_steps = math.ceil(one_pass * spec.pool_epochs)
        run.finetune_steps = math.ceil(one_finetune * spec.finetune_passes)
        run.logits = dict(self_logits) if spec.teacher == "self" else dict(big_logits)
        run.run_row(spec.row)
        record["rows"][name] = {
            **run.results[name],
            "pool_epochs": spec.pool_epochs,
            "finetune_passes": spec.finetune_passes,
        }
        if spec.teacher == "self":
            self_logits = dict(run.logits)
        _write(out_path, record)
    run.pretrain_steps, run.finetune_steps = one_pass, one_finetune
    _write(out_path, record)


def _stage(label: str) -> Any:
    """A progress callback that logs each tenth of a stage."""
    log.info("%s", label)
    marks = [0.0]

    def progress(fraction: float, loss: float) -> None:
        if fraction >= marks[0] + 0.1 or fraction >= 1.0 > marks[0]:
            marks[0] = fraction
            log.info("  %s: %.0f%% (loss %.4f)", label, 100 * fraction, loss)

    return progress


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m research.teacher",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("command", choices=["run", "summary"])
    parser.add_argument("--gold-file", type=Path, help="CSV or JSONL with text,label")
    parser.add_argument("--data-name", default="demo", help="a name for the data set's files")
    parser.add_argument("--sizes", default="500", help="comma-separated labeled-set sizes")
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument(
        "--rows", default="control,kd_big", help=f"comma-separated, of {', '.join(ROWS)}"
    )
    parser.add_argument(
        "--teacher", type=Path, default=DEFAULT_TEACHER, help="the teacher's encoder folder"
    )
    parser.add_argument(
        "--base-model", type=Path, help="the student's encoder (default: MiniLM-L6)"
    )
    parser.add_argument("--teacher-steps", type=int, default=160)
    parser.add_argument("--teacher-lr", type=float, default=5e-5)
    parser.add_argument("--out", type=Path, default=Path("teacher-results"))
    parser.add_argument("--cache", type=Path, help="teacher scores (default: OUT/cache)")
    parser.add_argument("--pool-texts", type=int, default=0, help="cap on the pool (0: all)")
    parser.add_argument("--dev-size", type=int, default=1000)
    parser.add_argument("--test-size", type=int, default=2000)
    return parser


def main(argv: list[str] | None = None) -> int:
    from research.teacher_report import write_summary

    args = build_parser().parse_args(argv)
    args.rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        print(f"python -m research.teacher: error: unknown rows {unknown}", file=sys.stderr)
        return 2
    args.cache = args.cache or args.out / "cache"
    sizes = [int(x) for x in args.sizes.split(",")]
    if args.command == "summary":
        print(write_summary(args.out, ROWS))
        return 0
    if not (args.teacher / "config.json").is_file():
        print(
            f"python -m research.teacher: error: no encoder in {args.teacher} "
            "(`make teacher` installs all-mpnet-base-v2 there; or --teacher FOLDER)",
            file=sys.stderr,
        )
        return 2
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

    base = args.base_model = args.base_model or packaged_base_model()
    positions = int(json.loads((base / "config.json").read_text())["max_position_embeddings"])
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    config.max_length, config.truncation = choose_length(config, data, tokenizer, positions)
    log.info("%s: max_length %s, truncation %s", data.source, config.max_length, config.truncation)
    for size in sizes:
        for seed in [int(x) for x in args.seeds.split(",")]:
            run_seed(args, config, data, size, seed)
    print(write_summary(args.out, ROWS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
