"""`python -m research.teacher` on tiny models: every row it is asked for, the big
teacher's scores cached and reused, and the tables merged from the per-seed files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from research.teacher import main
from tests.conftest import write_gold_file


@pytest.mark.slow
def test_the_study_runs_in_parts_and_merges(tmp_path: Path, tiny_base: Path, tiny_teacher: Path):
    gold = write_gold_file(tmp_path / "gold.jsonl", n=400, seed=3)
    out = tmp_path / "out"
    common = [
        "--gold-file", str(gold), "--data-name", "synthetic", "--sizes", "60",
        "--teacher", str(tiny_teacher), "--base-model", str(tiny_base),
        "--teacher-steps", "3", "--dev-size", "40", "--test-size", "60", "--out", str(out),
    ]  # fmt: skip
    assert main(["run", *common, "--seeds", "1,2", "--rows", "control,kd_big,kd_self"]) == 0
    cached = list((out / "cache").glob("teacher-*.json"))
    assert len(cached) == 2  # one fine-tuned teacher per labeled set
    # A later part adds rows to the same seeds and reuses the teachers' scores.
    more = "control_half,kd_big_half,control_ft3,kd_big_ft3"
    assert main(["run", *common, "--seeds", "1,2", "--rows", more]) == 0
    assert sorted(cached) == sorted((out / "cache").glob("teacher-*.json"))
    seed = json.loads((out / "synthetic-60-1.json").read_text())
    assert set(seed["rows"]) == {"control", "kd_big", "kd_self", *more.split(",")}
    # Three times the gold fine-tuning after the pool, and a control given as many steps.
    steps = {name: row["steps"] for name, row in seed["rows"].items()}
    assert steps["kd_big_ft3"]["pretrain"] == steps["kd_big"]["pretrain"]
    assert seed["rows"]["kd_big_ft3"]["finetune_passes"] == 3.0
    budget = steps["kd_big"]["pretrain"] + 3 * seed["finetune_steps"]
    assert steps["control_ft3"]["finetune"] == budget
    assert seed["teacher"]["relabel_texts"] == seed["pool"] + 40 + 60

    result = json.loads((out / "results.json").read_text())["synthetic-60"]["summary"]
    assert result["seeds"] == [1, 2]
    kd_big = result["rows"]["kd_big"]
    assert kd_big["control"] == "control" and kd_big["vs_control"]["n"] == 2
    assert "share_of_teacher_gain" in kd_big
    assert result["rows"]["kd_big_half"]["control"] == "control_half"
    assert result["rows"]["kd_big_ft3"]["control"] == "control_ft3"
    table = (out / "results.md").read_text()
    assert "### synthetic, 60 labels (seeds 1, 2)" in table
    assert "| big teacher |" in table and "| `kd_big_half` |" in table


def test_a_missing_teacher_or_row_is_a_clear_error(tmp_path: Path, capsys):
    assert main(["run", "--teacher", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "make teacher" in capsys.readouterr().err
    assert main(["run", "--rows", "kd_nothing", "--out", str(tmp_path)]) == 2
    assert "unknown rows ['kd_nothing']" in capsys.readouterr().err
