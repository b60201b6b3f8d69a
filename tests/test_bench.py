"""`make bench` in its quick form: every part runs and writes its numbers (no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert {"ceiling", "naive", "service", "swap", "while_training", "training"} <= set(results)
    forms = results["ceiling"]["forms"]
    assert {"fp32", "int8", "torch.compile", "onnxruntime"} == set(forms)
    for name in ("fp32", "int8"):
        assert forms[name]["best_texts_per_s"] > 0 and 0 <= forms[name]["test_macro_f1"] <= 1
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
    swap = results["swap"]
    assert swap["failed"] == 0
    assert all(s is not None for s in swap["seconds_to_first_new_answer"].values())
    assert results["training"]["ours"]["tokens_per_s"] > 0
    assert "| ours /label, concurrency 1 |" in proc.stdout
