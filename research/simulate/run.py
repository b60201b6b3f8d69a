"""A simulation end to end (`make simulate`, `python -m research.simulate`): the data,
each seed's first model, every arm over the same rounds, the statistics, and
results.json, results.md and served.png."""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
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


def run(
    config: SimulateConfig, out_dir: Path, progress: Progress, outputs: bool = True
) -> dict[str, Any]:
    """The whole simulation; writes its outputs into `out_dir` and returns what it wrote
    to results.json. The stores live in a temporary folder, or under `out_dir/stores`
    with `keep_stores`. Without `outputs`, only each arm's record (`KeptRuns`): what one
    of several processes sharing the work writes."""
    config.validate()
    started = time.monotonic()
    data = load(config)
    if config.keep_stores:
        root = out_dir / "stores"
        shutil.rmtree(root, ignore_errors=True)
        runs = _every_seed(config, data, root, out_dir, progress)
    else:
        with tempfile.TemporaryDirectory(prefix="pfp-simulate-") as tmp:
            runs = _every_seed(config, data, Path(tmp), out_dir, progress)
    if not outputs:
        return {"runs": runs}
    result: dict[str, Any] = {
        "config": config.to_json(),
        "arms": {name: asdict(ARMS_BY_NAME[name]) for name in config.arms},
        "gold_steps_matched_to": config.matched_arm(),
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
        "summary": summarize(runs, config.arms, config.steps),
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
    config: SimulateConfig, data: SimData, root: Path, out_dir: Path, progress: Progress
) -> list[dict[str, Any]]:
    runs = []
    kept = KeptRuns(out_dir / "runs", config)
    for seed in config.seeds:
        seed_data = for_seed(data, config, seed)
        template = data_dir_for(root, seed, "first-model")
        made = False
        for name in config.arms:
            arm = ARMS_BY_NAME[name]
            earlier = kept.load(seed, name)
            if earlier is not None:
                progress(f"seed {seed} · {name}: kept from {kept.path(seed, name)}")
                runs.append(earlier)
                continue
            if not kept.claim(seed, name):
                progress(f"seed {seed} · {name}: another process is running it; left to it")
                continue
            earlier = kept.load(seed, name)  # finished by another just before the claim
            if earlier is not None:
                kept.release(seed, name)
                runs.append(earlier)
                continue
            if not made:
                progress(f"seed {seed} · the first model")
                make_template(_settings(config, seed, template), seed_data, data.test)
                made = True
            # An arm that never retrains only reads the first model's store.
            folder = data_dir_for(root, seed, name) if arm.retrains else template
            if arm.retrains:
                copy_template(template, folder)
            settings = _settings(config, seed, folder)
            runs.append(run_arm(config, arm, seed, seed_data, settings, data.test, progress))
            runs[-1]["process"] = os.getpid()
            kept.save(runs[-1])
            kept.release(seed, name)
            if arm.retrains and not config.keep_stores:
                shutil.rmtree(folder)  # its model folders: a few hundred MB per arm
    return runs


class KeptRuns:
    """Each arm's record of a seed, written under `OUT/runs/` as soon as it is done: an
    interrupted run resumes where it stopped, and processes given the same `--out` share
    the work: each claims an arm of a seed before running it, and leaves to the others
    what they have claimed (a last run over every seed then only reads and summarizes).
    A record is reused only if it was made with the same sizes, data and job parameters
    (`SimulateConfig.fingerprint`)."""

    def __init__(self, folder: Path, config: SimulateConfig) -> None:
        self.folder = folder
        self.fingerprint = config.fingerprint()

    def path(self, seed: int, arm: str) -> Path:
        return self.folder / f"seed{seed}-{arm}.json"

    def load(self, seed: int, arm: str) -> dict[str, Any] | None:
        path = self.path(seed, arm)
        if not path.is_file():
            return None
        kept = json.loads(path.read_text())
        if kept.get("fingerprint") != self.fingerprint:
            return None  # made with other settings: run again, and replace it
        record: dict[str, Any] = kept["record"]
        return record

    def claim(self, seed: int, arm: str) -> bool:
        """True if this process may run `arm` of `seed`: nobody else alive has claimed it.
        The marker is linked into place whole, so that no reader sees it without its pid."""
        self.folder.mkdir(parents=True, exist_ok=True)
        marker = self.path(seed, arm).with_suffix(".claimed")
        mine = marker.with_suffix(f".claimed.{os.getpid()}")
        mine.write_text(str(os.getpid()))
        try:
            while True:
                try:
                    os.link(mine, marker)
                    return True
                except FileExistsError:
                    try:
                        owner = int(marker.read_text())
                    except (FileNotFoundError, ValueError):
                        continue  # released meanwhile: try again
                    if _alive(owner):
                        return False
                    marker.unlink(missing_ok=True)  # its process is gone: take it over
        finally:
            mine.unlink()

    def release(self, seed: int, arm: str) -> None:
        self.path(seed, arm).with_suffix(".claimed").unlink(missing_ok=True)

    def save(self, record: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(record["seed"], record["arm"])
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "record": record}, indent=1))
        tmp.replace(path)


def run_in_processes(
    config: SimulateConfig, out_dir: Path, processes: int, progress: Progress
) -> dict[str, Any]:
    """The simulation with its seeds and arms shared by `processes` processes, each on its
    own share of the cores (one each on a 2-core machine: a small encoder's training and
    scoring keep one thread busy better than two, as serving's processes do), then the
    outputs from every kept record. The processes start from different seeds and take the
    arms in different orders, so that they rarely wait on each other's claims."""
    config.validate()
    if config.keep_stores:
        raise ValueError("--keep-stores needs one process: the processes' stores would clash")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    count = max(1, min(processes, len(cores) or processes))
    children = []
    with tempfile.TemporaryDirectory(prefix="pfp-simulate-processes-") as tmp:
        for index in range(count):
            turn = index * len(config.seeds) // count
            part = replace(
                config,
                seeds=config.seeds[turn:] + config.seeds[:turn],
                arms=config.arms if index % 2 == 0 else config.arms[::-1],
            )
            spec = Path(tmp) / f"process{index}.json"
            spec.write_text(json.dumps(part.to_json()))
            share = set(cores[index::count])
            env = {**os.environ, "OMP_NUM_THREADS": str(len(share) or 1)}
            command = [sys.executable, "-m", "research.simulate", "--out", str(out_dir)]
            children.append(
                subprocess.Popen(
                    [*command, "--process-config", str(spec)],
                    env=env,
                    preexec_fn=functools.partial(os.sched_setaffinity, 0, share) if share else None,
                )
            )
        failed = [child.args for child in children if child.wait() != 0]
    if failed:
        progress(f"{len(failed)} of {count} processes failed; what they left runs here")
    return run(config, out_dir, progress)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _settings(config: SimulateConfig, seed: int, data_dir: Path) -> Settings:
    """The service's settings for `seed`: the first model fine-tuned as a job fine-tunes;
    the review sample is the service's own (REVIEW_SAMPLE: in these rounds, the traffic
    stored since the champion's pool, at most half of what a job could learn from)."""
    finetune = config.params(ARMS_BY_NAME["loop"], seed).finetune
    return service_settings(
        data_dir,
        config.base_model or packaged_base_model(),
        config.teacher,
        seed=seed,
        max_length=config.max_length,
        bootstrap_epochs=finetune.epochs,
        bootstrap_max_steps=finetune.max_steps,
    )
