"""`python -m research.simulate` (`make simulate`): the loop followed over time, arm by arm,
on the product's own code paths (docs/simulate.md). This is its command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

EXAMPLE = """\
examples:
  python -m research.simulate --out simulate-results   # the default run (docs/simulate.md)
  python -m research.simulate --quick --out /tmp/s     # a tiny encoder, two rounds: a smoke run
  python -m research.simulate --gold-file mine.csv --arms loop,never --seeds 1,2
  python -m research.simulate --arms loop,loop_teacher --teacher data/encoders/all-mpnet-base-v2
"""

# The tiny encoder of the smoke run learns nothing at the job's default rates.
TINY_RATES = {"finetune.learning_rate": 0.003, "pretrain.learning_rate": 0.003}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m research.simulate",
        description="For each seed and arm: a real store with a first model fine-tuned on a "
        "few hundred labels, then rounds of traffic sent through /label, a retraining job, "
        "the gate's review queue and the uncertainty queue answered from held-out labels "
        "within a budget per round, publish and swap; after every round the served model's "
        "macro-F1 on a fixed test split that nothing trains, selects or gates on. Writes "
        "results.json, results.md and served.png.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--gold-file", type=Path, help="CSV or JSONL with text,label (default: demo tweets)"
    )
    parser.add_argument("--out", type=Path, default=Path("simulate-results"), help="output folder")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: one seed, two rounds, a few hundred texts, a tiny random encoder "
        "unless --base-model is given",
    )
    parser.add_argument("--seeds", help="comma-separated seeds (default 1,2,3)")
    parser.add_argument(
        "--arms",
        help="comma-separated arms (default loop_teacher,gold_only,gold_random,never where a "
        "teacher is given or installed, else loop,gold_only,gold_random,never)",
    )
    parser.add_argument("--rounds", type=int, help="rounds of traffic, each with a job (default 3)")
    parser.add_argument(
        "--wait-rounds",
        type=int,
        help="rounds a candidate may wait for new traffic to review, and rounds of traffic "
        "with no job after the last (default 2)",
    )
    parser.add_argument(
        "--initial-labels", type=int, help="labels of the first model (default 300)"
    )
    parser.add_argument("--round-texts", type=int, help="texts of traffic per round (default 1000)")
    parser.add_argument(
        "--budget",
        type=int,
        help="labels per round (default 400: as many as the gate queues for one decision)",
    )
    parser.add_argument(
        "--test-size", type=int, help="texts of the fixed test split (default 2000)"
    )
    parser.add_argument("--max-length", type=int, help="the service's MAX_LENGTH (default 128)")
    parser.add_argument("--base-model", type=Path, help="encoder folder (default: MiniLM-L6)")
    parser.add_argument(
        "--teacher",
        type=Path,
        help="a stronger teacher's encoder folder, for the loop_teacher arm (default: the one "
        "`make teacher` installed, if any)",
    )
    parser.add_argument(
        "--keep-stores", action="store_true", help="keep each arm's store under OUT/stores"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="share the seeds and arms among this many processes, each on its own share of "
        "the cores (2 on a 2-core machine is faster than one process with two threads)",
    )
    # One of those processes: its sizes as the first process resolved them (a JSON file).
    parser.add_argument("--process-config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="K=V",
        help="a job parameter of every arm's jobs (an arm's own settings still win), by its "
        "flat or dotted name, e.g. --param finetune.epochs=3",
    )
    return parser


def config_from(args: argparse.Namespace, tiny: Path | None) -> Any:
    """The SimulateConfig the arguments ask for (ValueError if they are not valid)."""
    from research.cli import job_params_from
    from research.simulate.config import TAUGHT_ARMS, SimulateConfig

    overrides: dict[str, Any] = {}
    for name in ("gold_file", "rounds", "wait_rounds", "initial_labels", "round_texts", "budget"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    for name in ("test_size", "max_length", "teacher", "base_model"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.teacher is None and not args.quick:
        # The teacher `make teacher` installed for the service, as its jobs would find it.
        from app.core.config import Settings

        installed = Settings().teacher_model_path
        if (installed / "config.json").is_file():
            overrides["teacher"] = installed
    if args.seeds:
        overrides["seeds"] = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.arms:
        overrides["arms"] = [a.strip() for a in args.arms.split(",") if a.strip()]
    if "arms" not in overrides and "teacher" in overrides:
        overrides["arms"] = list(TAUGHT_ARMS)
    overrides["keep_stores"] = args.keep_stores
    job_params: dict[str, Any] = {}
    if tiny is not None and args.base_model is None:
        overrides["base_model"] = tiny
        job_params.update(TINY_RATES)
    job_params.update(job_params_from(args.param))
    overrides["job_params"] = job_params
    config = SimulateConfig.quick(**overrides) if args.quick else SimulateConfig(**overrides)
    config.validate()
    return config


def cmd_simulate(args: argparse.Namespace) -> int:
    from research.cli import print_written
    from research.simulate.config import SimulateConfig
    from research.simulate.run import run, run_in_processes

    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    who = f"process {os.getpid()} · " if args.process_config or args.processes > 1 else ""

    def progress(stage: str) -> None:
        print(f"[{(time.monotonic() - started) / 60:5.1f} min] {who}{stage}", file=sys.stderr)

    if args.process_config:
        config = SimulateConfig.from_json(json.loads(args.process_config.read_text()))
        run(config, args.out, progress, outputs=False)
        return 0
    with tempfile.TemporaryDirectory(prefix="pfp-simulate-tiny-") as tmp:
        tiny = None
        if args.quick and args.base_model is None:
            from bench.tiny import build_tiny_bert

            tiny = build_tiny_bert(Path(tmp))
        try:
            config = config_from(args, tiny)
            if args.processes > 1:
                result = run_in_processes(config, args.out, args.processes, progress)
            else:
                result = run(config, args.out, progress)
        except ValueError as exc:
            print(f"python -m research.simulate: error: {exc}", file=sys.stderr)
            return 2
    print_written(args.out, ["results.json", "results.md", "served.png"], result["seconds"])
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(cmd_simulate(build_parser().parse_args(argv)))


if __name__ == "__main__":
    main()
