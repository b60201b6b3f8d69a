"""`make bench` in its quick form: every part runs and writes its numbers (no timing asserts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.ml.serving_forms import Form
from tests.processes import ROOT, service_env

pytestmark = pytest.mark.integration


def test_quick_bench_runs_every_part(tmp_path: Path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        env=service_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "bench.json").read_text())
    parts = {"ceiling", "naive", "service", "swap", "while_training", "training", "tuning"}
    assert parts <= set(results)
    forms = results["ceiling"]["forms"]
    student = ["student 1 of 2 layers, fp32", "student 1 of 2 layers, onnxruntime"]  # tiny BERT
    assert {
        "fp32",
        "int8",
        Form.TORCH_BF16,
        "torch.compile",
        "onnxruntime",
        Form.ONNX_INT8,
        *student,
    } == set(forms)
    # The machine's ceiling: every layout of processes x threads, for the served form.
    ceiling = results["ceiling"]
    layouts = {
        (r["processes"], r["threads"]) for r in ceiling["layouts"][ceiling["served"]]["rows"]
    }
    assert {(1, os.cpu_count()), (os.cpu_count(), 1)} <= layouts
    assert ceiling["best_texts_per_s"] == max(
        r["texts_per_s"] for r in ceiling["layouts"][ceiling["served"]]["rows"]
    )
    assert ceiling["forms_record"]["dev_n"] > 0
    # /label at c is also held to the passes c one-text requests can fill: a ceiling no
    # higher than the machine's, so a ratio no lower.
    ratios = {g["goal"].split(" (")[0]: g["measured"] for g in results["goals"]}
    reachable = ratios["/label c=8 / ceiling with 8 texts in flight"]
    assert reachable >= ratios["/label c=8 / machine ceiling"]
    # Self-tuned bounds against fixed ones, a fresh API each, every request answered.
    tuning = results["tuning"]["rows"]
    assert {row["batching"]["source"] for row in tuning if row["setting"].startswith("fixed")} == {
        "settings"
    }
    assert all(row["failed"] == 0 and row["texts_per_s"] > 0 for row in tuning)
    assert "self-tuned / best fixed bounds (texts/s)" in {g["goal"] for g in results["goals"]}
    for name in ("fp32", "int8"):
        assert forms[name]["best_texts_per_s"] > 0 and 0 <= forms[name]["test_macro_f1"] <= 1
    # The half-depth student's speed is measured in the same run; its quality is not
    # (it is cut, not trained, here: make repro measures that).
    for name in student:
        assert forms[name]["best_texts_per_s"] > 0 and forms[name]["test_macro_f1"] is None
    assert "half-layer student / full model (texts/s)" in {g["goal"] for g in results["goals"]}
    assert {"idle", "nice 0", "defaults: pauses while serving is busy"} <= set(
        results["while_training"]
    )
    assert all(row["failed"] == 0 for row in results["while_training"].values())
    assert {g["goal"] for g in results["goals"]} >= {
        "failed requests during swap",
        "joint step / naive step (tokens/s)",
    }
    for rows in results["service"].values():
        assert all(row["failed"] == 0 and row["texts_per_s"] > 0 for row in rows)
    # Where each request's CPU went, by thread of the service (named in the OS).
    split = next(r for r in results["service"]["/label"] if "cpu_ms_per_request" in r)
    cpu = split["cpu_ms_per_request"]
    assert cpu["inference"] > 0 and cpu["event loop (HTTP, routes, logs)"] > 0
    assert cpu["store writer"] > 0 and cpu["load client"] > 0
    assert "CPU per /label request at concurrency" in proc.stdout
    swap = results["swap"]
    assert swap["failed"] == 0
    assert all(s is not None for s in swap["seconds_to_first_new_answer"].values())
    assert results["training"]["ours"]["tokens_per_s"] > 0
    assert "| ours /label, concurrency 1 |" in proc.stdout


def test_gpu_script_dry_run_on_the_cpu_and_refusal_without_cuda(tmp_path: Path, tiny_base: Path):
    """`python -m bench.gpu` (the GPU benchmark) in its CPU dry run: every row is
    measured and written; asked for CUDA where there is none it says so and exits 2."""
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps([f"flight {i} was late again" for i in range(50)]))
    args = [sys.executable, "-m", "bench.gpu", "--base", str(tiny_base), "--texts", str(texts)]
    out = tmp_path / "gpu"
    run = subprocess.run(
        [*args, "--device", "cpu", "--seconds", "0.1", "--steps", "2", "--out", str(out)],
        cwd=ROOT,
        env=service_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((out / "gpu.json").read_text())
    assert set(result["ceiling_bf16"]) == {"1", "8", "32", "128", "512"}
    assert result["training_batch32"]["ours"]["tokens_per_s"] > 0
    assert "| training step |" in run.stdout
    import torch

    if not torch.cuda.is_available():
        refused = subprocess.run(args, cwd=ROOT, env=service_env(), capture_output=True, text=True)
        assert refused.returncode == 2 and "no CUDA device" in refused.stderr


def test_the_bench_finds_the_teacher_where_make_teacher_put_it(tmp_path: Path, monkeypatch):
    from app.core.config import Settings
    from bench.teacher import installed_teacher

    bench_settings = Settings(data_dir=tmp_path / "bench-results" / "data")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("TEACHER_MODEL", raising=False)
    assert installed_teacher(bench_settings) is None
    installed = tmp_path / "data" / "encoders" / "all-mpnet-base-v2"
    installed.mkdir(parents=True)
    (installed / "config.json").write_text("{}")
    assert installed_teacher(bench_settings) == installed
