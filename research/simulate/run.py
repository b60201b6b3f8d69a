"""A simulation end to end (`make simulate`, `python -m research.simulate`): the data,
each seed's first model, every arm over the same rounds, the statistics, and
results.json, results.md and served.png."""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from app.core.config import Settings, packaged_base_model
from research.repro import write_outputs
from research.simulate.config import ARMS_BY_NAME, SimulateConfig
from research.simulate.data import SimData, for_seed, load
from research.simulate.report import markdown, plot_served
from research.simulate.rounds import Progress, data_dir_for, run_arm
from research.simulate.service import copy_template, make_template, service_settings
from research.simulate.summary import summarize


def run(config: SimulateConfig, out_dir: Path, progress: Progress) -> dict[str, Any]:
    """The whole simulation; writes its outputs into `out_dir` and returns what it wrote
    to results.json. The stores live in a temporary folder, or under `out_dir/stores`
    with `keep_stores`."""
    config.validate()
    started = time.monotonic()
    data = load(config)
    if config.keep_stores:
        root = out_dir / "stores"
        shutil.rmtree(root, ignore_errors=True)
        runs = _every_seed(config, data, root, progress)
    else:
        with tempfile.TemporaryDirectory(prefix="pfp-simulate-") as tmp:
            runs = _every_seed(config, data, Path(tmp), progress)
    result: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "arms": {name: asdict(ARMS_BY_NAME[name]) for name in config.arms},
        "job": config.params(ARMS_BY_NAME["loop"], 0).model_dump(exclude={"seed"}),
        "data": {
            "source": data.source,
            "labels": data.labels,
            "test": len(data.test),
            "texts_outside_test": len(data.rest),
        },
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "runs": runs,
        "summary": summarize(runs, config.arms, config.rounds),
    }
    result["seconds"] = round(time.monotonic() - started, 1)
    write_outputs(
        out_dir,
        {
            "results.json": lambda p: p.write_text(json.dumps(result, indent=1) + "\n"),
            "results.md": lambda p: p.write_text(markdown(result)),
            "served.png": lambda p: plot_served(result, p),
        },
    )
    return result


def _every_seed(
    config: SimulateConfig, data: SimData, root: Path, progress: Progress
) -> list[dict[str, Any]]:
    runs = []
    for seed in config.seeds:
        seed_data = for_seed(data, config, seed)
        template = data_dir_for(root, seed, "first-model")
        progress(f"seed {seed} · the first model")
        make_template(_settings(config, seed, template), seed_data, data.test)
        for name in config.arms:
            arm = ARMS_BY_NAME[name]
            # An arm that never retrains only reads the first model's store.
            folder = data_dir_for(root, seed, name) if arm.retrains else template
            if arm.retrains:
                copy_template(template, folder)
            settings = _settings(config, seed, folder)
            runs.append(run_arm(config, arm, seed, seed_data, settings, data.test, progress))
            if arm.retrains and not config.keep_stores:
                shutil.rmtree(folder)  # its model folders: a few hundred MB per arm
    return runs


def _settings(config: SimulateConfig, seed: int, data_dir: Path) -> Settings:
    """The service's settings for `seed`: the first model fine-tuned as a job fine-tunes,
    and each job's candidate run beside its champion on the newest round of traffic."""
    finetune = config.params(ARMS_BY_NAME["loop"], seed).finetune
    return service_settings(
        data_dir,
        config.base_model or packaged_base_model(),
        config.teacher,
        seed=seed,
        max_length=config.max_length,
        bootstrap_epochs=finetune.epochs,
        bootstrap_max_steps=finetune.max_steps,
        review_sample=config.round_texts,
    )
