"""`python -m research` (`make repro`): the method against its compute-matched control.
The protocol is in research/protocol.py, the run in research/repro.py; this is its
command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

EXAMPLE = """\
examples:
  python -m research                       # the whole table on the demo tweets (docs/ablation.md)
  python -m research --quick --out /tmp/r  # a few hundred texts: a smoke run
  python -m research --gold-file mine.csv --labeled-sizes 500 --rows control,kd,control_half,kd_half
  python -m research --rows kd_mlm --labeled-sizes 500 --no-pool-curve  # one row, as in the table
"""


def build_parser() -> argparse.ArgumentParser:
    repro = argparse.ArgumentParser(
        prog="python -m research",
        description="For each labeled-set size and seed: train the compute-matched gold-only "
        "control (also the teacher), let it pseudo-label the pool, train each row with the "
        "very functions the retraining job runs, and compare each row with its control seed "
        "by seed on a held-out test set. Writes results.json (every number, per seed, and "
        "the settings), results.md (the tables) and rows.png (paired differences with 95%% "
        "intervals).",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    repro.add_argument(
        "--gold-file", type=Path, help="CSV or JSONL with text,label (default: demo tweets)"
    )
    repro.add_argument("--out", type=Path, default=Path("repro-results"), help="output folder")
    repro.add_argument("--quick", action="store_true", help="a few hundred texts: a smoke run")
    repro.add_argument(
        "--labeled-sizes", help="comma-separated labeled-set sizes (default 500,200)"
    )
    repro.add_argument("--seeds", help="comma-separated seeds (default 1,2,3,4,5)")
    repro.add_argument(
        "--rows",
        help="comma-separated rows for every size (default: the full set at the first size, "
        "a smaller one at the others); the control always runs",
    )
    repro.add_argument("--pool-texts", type=int, help="cap on the in-domain pool (default: all)")
    repro.add_argument("--no-pool-curve", action="store_true", help="leave out the pool-size curve")
    repro.add_argument(
        "--finetune-epochs", type=float, help="the job parameter finetune.epochs of every row"
    )
    repro.add_argument(
        "--pretrain-epochs", type=float, help="the job parameter pretrain.epochs of every row"
    )
    repro.add_argument("--max-length", type=int, help="tokens per text (default: from the data)")
    repro.add_argument(
        "--truncation",
        choices=["head", "head_tail"],
        help="how longer texts are cut (default: head_tail when over a tenth are cut)",
    )
    repro.add_argument("--base-model", type=Path, help="encoder folder (default: MiniLM-L6)")
    repro.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="K=V",
        help="a job parameter for every row (a row's own settings still win), by its flat "
        "or dotted name, e.g. --param token_deletion=0.2 or --param pretrain.token_deletion=0.2",
    )
    return repro


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


class BadArguments(ValueError):
    """Arguments that name no row or no valid job parameter."""


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ReproConfig fields the arguments change."""
    from app.ml.job_params import JobParams
    from research.cli import job_params_from
    from research.protocol import ROWS_BY_NAME, ReproConfig

    overrides: dict[str, Any] = {}
    for name in ("gold_file", "pool_texts", "base_model", "max_length", "truncation"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.seeds:
        overrides["seeds"] = _ints(args.seeds)
    if args.labeled_sizes:
        overrides["labeled_sizes"] = _ints(args.labeled_sizes)
    if args.rows:
        rows = [r.strip() for r in args.rows.split(",") if r.strip()]
        unknown = [r for r in rows if r not in ROWS_BY_NAME]
        if unknown:
            raise BadArguments(f"unknown rows {unknown}; choose from {list(ROWS_BY_NAME)}")
        overrides["rows"] = overrides["other_rows"] = rows
        if ReproConfig.curve_row not in rows:
            overrides["pool_curve"] = []  # the curve repeats kd_half: only when it is asked for
    if args.no_pool_curve:
        overrides["pool_curve"] = []
    job_params: dict[str, Any] = {}
    for flag, name in (
        ("finetune_epochs", "finetune.epochs"),
        ("pretrain_epochs", "pretrain.epochs"),
    ):
        if getattr(args, flag) is not None:
            job_params[name] = getattr(args, flag)
    try:
        job_params.update(job_params_from(args.param))
        JobParams.model_validate(job_params)
    except ValueError as exc:
        raise BadArguments(f"bad --param: {exc}") from exc
    if job_params:
        overrides["job_params"] = job_params
    return overrides


def cmd_repro(args: argparse.Namespace) -> int:
    import torch

    from app.core.progress import progress_bar
    from research.cli import print_written
    from research.protocol import ReproConfig
    from research.repro import run

    try:
        overrides = _overrides(args)
    except BadArguments as exc:
        print(f"python -m research: error: {exc}", file=sys.stderr)
        return 2
    config = ReproConfig.quick(**overrides) if args.quick else ReproConfig(**overrides)
    if os.environ.get("TORCH_THREADS"):  # as for the service; torch's default is every core
        torch.set_num_threads(int(os.environ["TORCH_THREADS"]))

    bar: Any = None
    started = time.monotonic()

    def stage(name: str) -> Any:
        nonlocal bar
        if bar is not None:
            bar.close()
        elapsed = time.monotonic() - started
        bar = progress_bar(
            total=1000,
            desc=f"[{elapsed / 60:5.1f} min] {name}",
            leave=False,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}",
        )

        def progress(fraction: float, _loss: float) -> None:
            assert bar is not None
            bar.update(int(fraction * 1000) - bar.n)

        return progress

    try:
        result = run(config, args.out, stage)
    except ValueError as exc:
        print(f"python -m research: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    print_written(args.out, ["results.json", "results.md", "rows.png"], result["seconds"])
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(cmd_repro(build_parser().parse_args(argv)))


if __name__ == "__main__":
    main()
