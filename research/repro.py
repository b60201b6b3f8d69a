"""The experiment end to end (`make repro`, `python -m research`): the data, every seed
of every labeled-set size, the statistics, and results.json, results.md and rows.png.
What it compares and why is research/protocol.py."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from research.plots import plot_rows
from research.protocol import CONTROL, ROWS, ROWS_BY_NAME, ReproConfig
from research.report import markdown_table
from research.seed_run import Stage, run_seed
from research.splits import choose_length, load_data
from research.stats import best_method, summarize, summarize_curve


def run(config: ReproConfig, out_dir: Path, stage: Stage) -> dict[str, Any]:
    """The whole experiment; writes results.json, results.md and rows.png into `out_dir`
    and returns what it wrote to results.json."""
    from transformers import AutoTokenizer

    from app.core.config import packaged_base_model

    unknown = [r for r in [*config.rows, *config.other_rows] if r not in ROWS_BY_NAME]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; choose from {list(ROWS_BY_NAME)}")
    if config.curve_row not in ROWS_BY_NAME or ROWS_BY_NAME[config.curve_row].method is None:
        raise ValueError(f"curve row {config.curve_row!r} is not a method row")
    base = config.base_model or packaged_base_model()
    started = time.monotonic()
    data = load_data(config)
    positions = int(json.loads((base / "config.json").read_text())["max_position_embeddings"])
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    length, truncation = choose_length(config, data, tokenizer, positions)
    config.max_length, config.truncation = length, truncation
    tables: list[dict[str, Any]] = []
    for i, size in enumerate(config.labeled_sizes):
        rows = config.rows if i == 0 else config.other_rows
        names = [CONTROL, *[r for r in rows if r != CONTROL]]
        curve = i == 0 and bool(config.pool_curve)
        seeds = [
            run_seed(config, data, base, seed, size, names, curve, stage) for seed in config.seeds
        ]
        summary = summarize(seeds, names)
        tables.append(
            {
                "labeled_size": size,
                "seeds": seeds,
                "summary": summary,
                "best_method": best_method(summary),
            }
        )
    result: dict[str, Any] = {
        "control": CONTROL,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        # What every row trains with before its own settings and its seed.
        "job": config.params(0).model_dump(exclude={"seed"}),
        "data": {
            "source": data.source,
            "labels": data.labels,
            "in_domain": len(data.in_domain) + len(data.dev) + len(data.test),
            "out_of_domain": len(data.out_of_domain),
            "dev": len(data.dev),
            "test": len(data.test),
        },
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "rows": {r.name: asdict(r) for r in ROWS},
        "tables": tables,
    }
    if config.pool_curve and tables:
        result["pool_curve"] = summarize_curve(tables[0]["seeds"], config)
    result["seconds"] = round(time.monotonic() - started, 1)
    write(result, out_dir)
    return result


def write(result: dict[str, Any], out_dir: Path) -> None:
    write_outputs(
        out_dir,
        {
            "results.json": lambda p: p.write_text(json.dumps(result, indent=1) + "\n"),
            "results.md": lambda p: p.write_text(markdown_table(result)),
            "rows.png": lambda p: plot_rows(result, p),
        },
    )


def write_outputs(out_dir: Path, outputs: dict[str, Callable[[Path], object]]) -> None:
    """Each file is written beside its final name and renamed over it: a reader never sees
    a half-written result, and an interrupted run leaves the previous one whole."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, produce in outputs.items():
        tmp = out_dir / f".{name}.tmp{Path(name).suffix}"
        produce(tmp)
        tmp.replace(out_dir / name)
