"""`python -m bench [--quick] [--parts 1,3]`: measure the service against its baselines.

1. ceiling: the bare batched forward pass, in-process, per batch size, for each form of
   the model (fp32, int8 dynamic quantization, torch.compile, ONNX Runtime), with the
   test macro-F1 of each;
2. naive: a transformers pipeline behind FastAPI, one request at a time;
3. ours: `/label` and `/label/batch` at several concurrencies, from a separate client;
4. swap under load: a model published while two API processes serve;
5. serving while a training job runs on the same machine, per way the worker yields;
6. training: our joint step against a naive one on the same batches;
7. tuning: `/label` with the self-tuned micro-batch bounds against fixed ones, and per
   layout of API processes x threads, a fresh API each.

The service is started as a user would (`pfp api`, `pfp worker`), on loopback. Results go
to bench-results/bench.json, a Markdown table on stdout and, for a full run, the
benchmark table in docs/benchmarks.md.

Here: the command line. The parts are in bench/parts.py, the state they share in
bench/context.py, the service's processes in bench/service.py, the goals and the table in
bench/report.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from bench.context import Bench
from bench.forms import log
from bench.parts import PARTS
from bench.report import goals, render, write_table
from bench.service import ROOT


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="a tiny model and short runs (a smoke test)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument(
        "--parts",
        default=",".join(map(str, PARTS)),
        help="which parts to run, e.g. 1,3 ("
        + ", ".join(f"{k}: {name}" for k, (name, _) in PARTS.items())
        + ")",
    )
    parser.add_argument(
        "--reuse-model",
        action="store_true",
        help="serve the model a previous run bootstrapped under --out (saves minutes while tuning)",
    )
    parser.add_argument(
        "--no-docs", action="store_true", help="do not write the table into docs/benchmarks.md"
    )
    args = parser.parse_args()
    parts = sorted({int(p) for p in args.parts.split(",")})
    if not set(parts) <= set(PARTS):
        parser.error(f"--parts takes numbers from {sorted(PARTS)}")
    out: Path = args.out
    if not args.reuse_model:
        shutil.rmtree(out / "data", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    bench = Bench(args.quick, out)
    results: dict[str, Any] = {
        "machine": {
            "cpu": cpu_name(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "quick": args.quick,
        "parts": parts,
        "started": time.strftime("%Y-%m-%d %H:%M"),
    }
    try:
        if set(parts) & {1, 2, 3, 4, 5, 7}:
            bench.bootstrap(args.reuse_model)
        for number in parts:
            name, part = PARTS[number]
            results[name] = part(bench)
    finally:
        bench.service.stop()
        if bench.store is not None:
            bench.store.dispose()
    results["goals"] = goals(results)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M")
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    print(render(results))
    log(f"wrote {out / 'bench.json'}")
    if not args.quick and not args.no_docs and parts == sorted(PARTS):
        write_table(results, ROOT / "docs" / "benchmarks.md")


if __name__ == "__main__":
    main()
