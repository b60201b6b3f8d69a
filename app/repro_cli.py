"""`pfp repro`: the ablation table of issue 3 (see app/ml/repro.py for the protocol)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

EXAMPLE = """\
examples:
  pfp repro                          # the full table on the demo tweets (under an hour)
  pfp repro --quick --out /tmp/r     # a few hundred texts: a smoke run of a few minutes
  pfp repro --gold-file mine.csv --labeled-size 500 --rows baseline,soft_only
  pfp repro --curve                  # also test macro-F1 against 500/1000/2000/4000 labels
"""


def add_command(sub: Any) -> None:
    repro = sub.add_parser(
        "repro",
        help="run the paper's experiment: the ablation table, its JSON and plots",
        description="Fine-tune a teacher on a small labeled set, let it pseudo-label a pool "
        "of unlabeled text, train each row of the table from that pool with the very "
        "functions the retraining job runs, and score every row on a held-out test set over "
        "several seeds. Writes results.json (every number, per seed, and the settings), "
        "results.md (the table) and rows.png (test macro-F1 with error bars).",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    repro.add_argument(
        "--gold-file", type=Path, help="CSV or JSONL with text,label (default: demo tweets)"
    )
    repro.add_argument("--out", type=Path, default=Path("repro-results"), help="output folder")
    repro.add_argument("--quick", action="store_true", help="a few hundred texts, a few minutes")
    repro.add_argument("--labeled-size", type=int, help="labeled training texts (default 2000)")
    repro.add_argument("--pool-size", type=int, help="pseudo-labeled texts per student")
    repro.add_argument("--seeds", help="comma-separated seeds (default 1,2,3)")
    repro.add_argument("--rows", help="comma-separated rows (default: all)")
    repro.add_argument("--finetune-epochs", type=float)
    repro.add_argument("--pretrain-epochs", type=float)
    repro.add_argument("--base-model", type=Path, help="encoder folder (default: MiniLM-L6)")
    repro.add_argument(
        "--curve",
        action="store_true",
        help="also plot test macro-F1 against labeled-set size (500/1000/2000/4000) for the "
        "baseline and the best method row",
    )
    repro.add_argument("--curve-sizes", help="comma-separated sizes for --curve")
    repro.add_argument(
        "--in-domain-pool",
        action="store_true",
        help="leave the out-of-domain texts out of the pool",
    )
    repro.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="K=V",
        help="a job parameter for every row (a row's own settings still win), e.g. "
        "--param mlm_weight=0.1",
    )
    repro.set_defaults(func=cmd_repro)


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"{text!r} is not K=V")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value  # a bare word: label_mode=hard


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def cmd_repro(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from app.ml.job_params import JobParams
    from app.ml.repro import VARIANTS_BY_NAME, ReproConfig, run

    overrides: dict[str, Any] = {}
    for name in (
        "gold_file",
        "labeled_size",
        "pool_size",
        "finetune_epochs",
        "pretrain_epochs",
        "base_model",
    ):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.seeds:
        overrides["seeds"] = _ints(args.seeds)
    if args.rows:
        overrides["variants"] = [r.strip() for r in args.rows.split(",") if r.strip()]
        unknown = [r for r in overrides["variants"] if r not in VARIANTS_BY_NAME]
        if unknown:
            print(
                f"pfp repro: unknown rows {unknown}; choose from {list(VARIANTS_BY_NAME)}",
                file=sys.stderr,
            )
            return 2
    if args.in_domain_pool:
        overrides["in_domain_pool_only"] = True
    if args.param:
        try:
            overrides["job_params"] = dict(_param(p) for p in args.param)
            JobParams.model_validate(overrides["job_params"])
        except ValueError as exc:
            print(f"pfp repro: error: bad --param: {exc}", file=sys.stderr)
            return 2
    if args.curve or args.curve_sizes:
        overrides["curve_sizes"] = _ints(args.curve_sizes or "500,1000,2000,4000")
    config = ReproConfig.quick(**overrides) if args.quick else ReproConfig(**overrides)
    if os.environ.get("TORCH_THREADS"):  # as for the service; torch's default is every core
        torch.set_num_threads(int(os.environ["TORCH_THREADS"]))

    bar: tqdm | None = None
    started = time.monotonic()

    def stage(name: str) -> Any:
        nonlocal bar
        if bar is not None:
            bar.close()
        elapsed = time.monotonic() - started
        bar = tqdm(
            total=1000,
            desc=f"[{elapsed / 60:5.1f} min] {name}",
            unit="‰",
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
        print(f"pfp repro: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    print((args.out / "results.md").read_text())
    print(
        f"Wrote {args.out}/results.json, results.md, rows.png"
        + (", curve.png" if "curve" in result else "")
        + f" in {result['seconds'] / 60:.1f} min."
    )
    return 0
