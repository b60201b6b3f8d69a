"""`python -m research --quick`: the experiment runs end to end, compares every row with its
compute-matched control seed by seed, and writes a table, a JSON and a plot that agree.
(The tiny test encoder keeps it to seconds; the real table is `make repro`.)"""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest

from app.ml.job_params import JobParams
from research.__main__ import main
from research.protocol import MAIN_ROWS, ROWS, ReproConfig
from research.splits import draw_labeled, load_data
from research.stats import paired
from tests.conftest import write_gold_file

# The whole ablation end to end on the tiny encoder: about 30 s, so not in `make test-fast`.
pytestmark = pytest.mark.slow

# The tiny encoder learns nothing at the job's default rate: let it, so rows differ.
FAST = ["--param", "finetune_learning_rate=0.003", "--param", "pretrain_learning_rate=0.003"]


def _run(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def quick_table(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("repro")
    assert _run(["--quick", "--base-model", str(tiny_base), "--out", str(out), *FAST]) == 0
    result = json.loads((out / "results.json").read_text())
    result["_out"] = str(out)
    return result


def test_every_row_is_compared_with_its_control_seed_by_seed(quick_table: dict):
    result = quick_table
    assert result["control"] == "control"
    (table,) = result["tables"]
    assert table["labeled_size"] == 60 and list(table["summary"]) == MAIN_ROWS
    assert [s["seed"] for s in table["seeds"]] == [1, 2]
    for seed in table["seeds"]:
        assert set(seed["rows"]) == set(MAIN_ROWS)
        assert seed["labeled"] == 60 and 0.0 <= seed["pool"]["pseudo_label_accuracy"] <= 1.0
        for name, row in seed["rows"].items():
            assert row["test"]["n"] == 200 and row["dev"]["n"] == 100, name
        # Every row had the same step budget: the control all on gold, a method row split
        # between the pool and gold (fine-tuning may stop early on dev).
        budget = seed["steps_budget"]
        assert seed["rows"]["control"]["steps"]["finetune"] <= budget
        kd = seed["rows"]["kd"]["steps"]
        assert kd["pretrain"] + kd["finetune"] <= budget and kd["pretrain"] > 0
        assert seed["rows"]["kd_half_topk"]["pool_used"]["used"] < seed["pool"]["texts"]
    for name, entry in table["summary"].items():
        values = [s["rows"][name]["test"]["macro_f1"] for s in table["seeds"]]
        assert entry["test_macro_f1_mean"] == pytest.approx(statistics.fmean(values), abs=1e-5)
        control = "control_half" if "half" in name else "control"
        if name == control:
            assert "vs_control" not in entry
            continue
        reference = [s["rows"][control]["test"]["macro_f1"] for s in table["seeds"]]
        diffs = [a - b for a, b in zip(values, reference, strict=True)]
        vs = entry["vs_control"]
        assert vs["row"] == control and vs["n"] == 2
        assert vs["mean"] == pytest.approx(statistics.fmean(diffs), abs=1e-5)
        low, high = vs["ci95"]
        assert low <= vs["mean"] <= high
        assert vs["wins"] == sum(d > 0 for d in diffs)
        assert "gate_vs_teacher" in entry


def test_the_table_the_json_and_the_plot_agree(quick_table: dict):
    out = Path(quick_table["_out"])
    table = (out / "results.md").read_text()
    for name in MAIN_ROWS:
        assert f"`{name}`" in table
    summary = quick_table["tables"][0]["summary"]
    kd = summary["kd"]
    assert f"{100 * kd['test_macro_f1_mean']:.2f} ± {100 * kd['test_macro_f1_sd']:.2f}" in table
    assert f"{100 * kd['vs_control']['mean']:+.2f}" in table
    assert "Pool size and mix" in table
    curve = quick_table["pool_curve"]
    assert curve["row"] == "kd_half"
    assert list(curve["points"]) == ["100_in", "100_in+100_ood", "300_in (all)"]
    assert (out / "rows.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md", "rows.png"]


def test_rows_rerun_exactly(quick_table: dict, tiny_base: Path, tmp_path: Path):
    """`--rows` trains the teacher again and then only the rows asked for: the same numbers."""
    out = tmp_path / "again"
    argv = ["--quick", "--base-model", str(tiny_base), "--out", str(out), *FAST]
    assert _run([*argv, "--rows", "kd_half_noise", "--no-pool-curve"]) == 0
    again = json.loads((out / "results.json").read_text())["tables"][0]
    assert list(again["summary"]) == ["control", "kd_half_noise"]
    for before, after in zip(quick_table["tables"][0]["seeds"], again["seeds"], strict=True):
        for name in ("control", "kd_half_noise"):
            assert after["rows"][name]["test"] == before["rows"][name]["test"], name


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w") as handle:
        for text, label in rows:
            handle.write(json.dumps({"text": text, "label": label}) + "\n")
    return path


@pytest.mark.parametrize("kind", ["long_documents", "many_classes", "binary"])
def test_any_gold_file(kind: str, tiny_base: Path, tmp_path: Path):
    rng = random.Random(3)
    if kind == "long_documents":
        # The label is only said at the end of a long document: head+tail keeps it.
        rows = [
            (
                " ".join(rng.choice(["report", "filed", "today", "page"]) for _ in range(600))
                + f" doc{i} verdict {'approved' if i % 2 else 'denied'}",
                "yes" if i % 2 else "no",
            )
            for i in range(500)
        ]
    elif kind == "many_classes":
        rows = [(f"topic{i % 24} words {rng.random()}", f"class{i % 24:02d}") for i in range(700)]
    else:
        rows = [(f"{'good' if i % 2 else 'bad'} item {i}", str(i % 2)) for i in range(500)]
    gold = _write(tmp_path / "gold.jsonl", rows)
    out = tmp_path / "out"
    argv = ["--quick", "--base-model", str(tiny_base), "--gold-file", str(gold)]
    argv += ["--rows", "kd_half", "--seeds", "1", "--out", str(out)]
    assert _run(argv) == 0
    result = json.loads((out / "results.json").read_text())
    labels = sorted({label for _, label in rows})
    assert result["data"]["labels"] == labels
    seed = result["tables"][0]["seeds"][0]
    # Every class is in the labeled set, even 24 of them in 60 texts.
    assert set(seed["labeled_distribution"]) == set(labels)
    config = result["config"]
    if kind == "long_documents":
        assert config["truncation"] == "head_tail" and config["max_length"] == 128
    else:
        assert config["truncation"] == "head" and config["max_length"] == 32
    assert "pool_curve" in result and "100_in+100_ood" not in result["pool_curve"]["points"]


def test_repro_refuses_what_it_cannot_run(tiny_base: Path, tmp_path: Path, capsys):
    gold = write_gold_file(tmp_path / "gold.jsonl", n=80, seed=4)
    out = tmp_path / "repro"
    argv = ["--quick", "--base-model", str(tiny_base), "--out", str(out)]
    assert _run([*argv, "--gold-file", str(gold)]) == 2
    assert "leave no pool" in capsys.readouterr().err
    assert _run([*argv, "--rows", "kd,magic"]) == 2
    assert "unknown rows ['magic']" in capsys.readouterr().err
    assert _run([*argv, "--param", "mlm_weight=-1"]) == 2
    assert "bad --param" in capsys.readouterr().err
    assert not out.exists()


def test_labeled_sets_are_stratified_and_splits_do_not_overlap():
    data = load_data(ReproConfig.quick())
    dev, test = {t for t, _ in data.dev}, {t for t, _ in data.test}
    rest = {t for t, _ in data.in_domain} | {t for t, _ in data.out_of_domain}
    assert not dev & test and not (dev | test) & rest
    labeled, pool = draw_labeled(data.in_domain, 200, random.Random(1))
    assert len(labeled) == 200 and len(labeled) + len(pool) == len(data.in_domain)
    assert not {t for t, _ in labeled} & {t for t, _ in pool}
    share = {
        lbl: sum(1 for _, x in data.in_domain if x == lbl) / len(data.in_domain)
        for lbl in data.labels
    }
    for label in data.labels:
        assert abs(sum(1 for _, x in labeled if x == label) - 200 * share[label]) <= 1


def test_rows_are_job_parameters_and_intervals_are_t_intervals():
    for row in ROWS:
        if row.method is not None:
            JobParams.model_validate(
                ReproConfig(max_length=64).params(1, **row.method).model_dump()
            )
    # Five seeds: mean ± 2.776 x sd / sqrt(5).
    diff = paired([0.80, 0.82, 0.81, 0.83, 0.79], [0.79, 0.80, 0.80, 0.80, 0.78])
    assert diff["mean"] == pytest.approx(0.016)
    half = 2.776 * statistics.stdev([0.01, 0.02, 0.01, 0.03, 0.01]) / 5**0.5
    assert diff["ci95"] == pytest.approx([0.016 - half, 0.016 + half], abs=1e-5)
    assert diff["wins"] == 5
