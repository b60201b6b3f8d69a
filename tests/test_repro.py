"""`pfp repro --quick`: the ablation runs end to end and writes a table, a JSON and a plot
whose numbers agree with each other. (The tiny test encoder keeps it to seconds; the real
table is `make repro`.)"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from app.cli import main
from app.ml.job_params import JobParams
from app.ml.repro import VARIANTS, ReproConfig, load_data
from tests.conftest import write_gold_file


def _run(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_quick_repro_on_the_demo_tweets(tiny_base: Path, tmp_path: Path, capsys):
    out = tmp_path / "repro"
    assert _run(["repro", "--quick", "--base-model", str(tiny_base), "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    names = [v.name for v in VARIANTS]
    assert list(result["summary"]) == names
    assert [s["seed"] for s in result["seeds"]] == [1, 2, 3]
    for seed in result["seeds"]:
        assert set(seed["rows"]) == set(names)
        pool = seed["pool"]
        assert pool["texts"] == 200 and 0 < pool["in_domain"] < 200  # both kinds of tweets
        for key in ("pseudo_label_accuracy", "pseudo_label_accuracy_in_domain"):
            assert 0.0 <= pool[key] <= 1.0
        for name, row in seed["rows"].items():
            assert row["test"]["n"] == 200 and row["dev"]["n"] == 100, name
            assert 0.0 <= row["test"]["macro_f1"] <= 1.0
        assert seed["rows"]["tapt"]["pretrain_loss"]["task_loss"] == [0.0, 0.0]
        assert seed["rows"]["hard_only"]["pretrain_loss"]["mlm_loss"] == [0.0, 0.0]
    # The summary is the mean and sd of the per-seed numbers, and the gain is paired.
    for name in names:
        values = [s["rows"][name]["test"]["macro_f1"] for s in result["seeds"]]
        entry = result["summary"][name]
        assert entry["test_macro_f1_mean"] == pytest.approx(statistics.fmean(values), abs=1e-5)
        assert entry["test_macro_f1_sd"] == pytest.approx(statistics.stdev(values), abs=1e-5)
        base = result["summary"]["baseline"]["test_macro_f1_mean"]
        assert entry["test_macro_f1_gain"] == pytest.approx(
            entry["test_macro_f1_mean"] - base, abs=1e-5
        )
    table = (out / "results.md").read_text()
    for name in names:
        assert f"`{name}`" in table
    assert (out / "rows.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test macro-F1" in capsys.readouterr().out
    # Nothing half-written is left beside the results.
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md", "rows.png"]


def test_repro_on_a_gold_file_with_chosen_rows_and_the_curve(tiny_base: Path, tmp_path: Path):
    gold = write_gold_file(tmp_path / "gold.jsonl", n=600, seed=4)
    out = tmp_path / "repro"
    argv = ["repro", "--quick", "--base-model", str(tiny_base), "--gold-file", str(gold)]
    argv += ["--rows", "soft_only", "--seeds", "1,2", "--curve-sizes", "50,100"]
    assert _run([*argv, "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert list(result["summary"]) == ["baseline", "soft_only"]
    assert result["seeds"][0]["pool"]["pseudo_label_accuracy_out_of_domain"] is None
    curve = result["curve"]
    assert curve["variant"] == "soft_only"
    assert [p["labeled_size"] for p in curve["rows"]["baseline"]] == [50, 100]
    assert (out / "curve.png").is_file()


def test_repro_refuses_what_it_cannot_run(tiny_base: Path, tmp_path: Path, capsys):
    gold = write_gold_file(tmp_path / "gold.jsonl", n=100, seed=4)
    out = tmp_path / "repro"
    argv = ["repro", "--quick", "--base-model", str(tiny_base), "--out", str(out)]
    assert _run([*argv, "--gold-file", str(gold)]) == 2
    assert "distinct labeled texts" in capsys.readouterr().err
    assert _run([*argv, "--rows", "baseline,magic"]) == 2
    assert "unknown rows ['magic']" in capsys.readouterr().err
    assert _run([*argv, "--param", "mlm_weight=-1"]) == 2
    assert "bad --param" in capsys.readouterr().err
    assert not out.exists()


def test_in_domain_pool_and_job_parameters_for_every_row(tiny_base: Path, tmp_path: Path):
    out = tmp_path / "repro"
    argv = ["repro", "--quick", "--base-model", str(tiny_base), "--out", str(out), "--seeds", "1"]
    argv += ["--rows", "soft_mlm", "--in-domain-pool", "--param", "pretrain_max_steps=3"]
    assert _run(argv) == 0
    result = json.loads((out / "results.json").read_text())
    pool = result["seeds"][0]["pool"]
    assert pool["in_domain"] == pool["texts"] == 200
    assert pool["pseudo_label_accuracy_out_of_domain"] is None
    assert result["config"]["job_params"] == {"pretrain_max_steps": 3}


def test_splits_do_not_overlap_and_rows_are_job_parameters():
    data = load_data(ReproConfig.quick())
    dev, test = {t for t, _ in data.dev}, {t for t, _ in data.test}
    rest = {t for t, _ in data.in_domain} | {t for t, _ in data.out_of_domain}
    assert not dev & test and not (dev | test) & rest
    # Every row trains with parameters the retraining job accepts as they are.
    for variant in VARIANTS:
        JobParams.model_validate(ReproConfig().params(1, **variant.overrides).model_dump())


def test_job_parameters_need_something_to_pre_train():
    with pytest.raises(ValueError, match="cannot both be 0"):
        JobParams(mlm_weight=0, task_weight=0)
