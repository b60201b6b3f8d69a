"""`python -m research.simulate --quick`: every arm runs its rounds on a real store through
the service's own paths, and results.json, results.md and served.png say what a reader
checks: the served model's test macro-F1 after every round, every gate decision beside
the candidate's true test difference, labels within the budget, and a test split that
never entered what trains, selects or gates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from app.store import gold, versions
from app.store.database import Store
from app.store.tables import PseudoLabel
from research.simulate.__main__ import main
from research.simulate.config import SimulateConfig
from research.simulate.data import load
from tests.conftest import write_gold_file

ARMS = ["loop", "gold_only", "gold_random", "never", "loop_teacher"]
# The tiny encoders learn nothing at the job's default rates: let them, so that the gate
# has real differences to judge.
FAST = [
    "--param",
    "finetune.learning_rate=0.003",
    "--param",
    "pretrain.learning_rate=0.003",
    "--param",
    "teacher.learning_rate=0.003",
    "--param",
    "teacher.finetune_steps=20",
]


@pytest.fixture(scope="module")
def simulated(
    tiny_base: Path, tiny_teacher: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict, Path, Path]:
    folder = tmp_path_factory.mktemp("simulate")
    gold_file = write_gold_file(folder / "gold.jsonl", n=600)
    out = folder / "out"
    argv = [
        "--quick",
        "--gold-file",
        str(gold_file),
        "--base-model",
        str(tiny_base),
        "--teacher",
        str(tiny_teacher),
        "--arms",
        ",".join(ARMS),
        "--keep-stores",
        "--out",
        str(out),
        *FAST,
    ]
    with pytest.raises(SystemExit) as exit_status:
        main(argv)
    assert exit_status.value.code == 0
    return json.loads((out / "results.json").read_text()), out, gold_file


def test_every_arm_records_the_served_macro_f1_after_every_round(simulated):
    result, _, _ = simulated
    rounds = result["config"]["rounds"]
    assert rounds == 2 and result["config"]["seeds"] == [1]
    assert sorted(r["arm"] for r in result["runs"]) == sorted(ARMS)
    for run in result["runs"]:
        assert [row["round"] for row in run["rounds"]] == list(range(rounds + 1)), run["arm"]
        for row in run["rounds"]:
            assert 0.0 <= row["served_test"]["macro_f1"] <= 1.0
    for arm in ARMS:
        served = result["summary"]["served"][arm]
        assert [r["round"] for r in served] == list(range(rounds + 1))
    never = next(r for r in result["runs"] if r["arm"] == "never")
    assert {row["served_version"] for row in never["rounds"]} == {1}
    assert len({row["served_test"]["macro_f1"] for row in never["rounds"]}) == 1
    assert {(d["arm"], d["reference"]) for d in result["summary"]["last_round"]} >= {
        ("loop", "never"),
        ("loop", "gold_only"),
        ("gold_only", "gold_random"),
    }


def test_gate_decisions_carry_the_candidates_true_test_difference(simulated):
    result, out, _ = simulated
    for run in result["runs"]:
        if run["arm"] == "never":
            assert run["decisions"] == []
            continue
        jobs = [row["job"] for row in run["rounds"][1:]]
        assert all(job["status"] == "succeeded" for job in jobs), jobs
        assert len(run["decisions"]) == len(jobs)
        store = Store(f"sqlite:///{out / 'stores' / 'seed1' / run['arm'] / 'service.db'}")
        try:
            with store.session() as session:
                for d in run["decisions"]:
                    row = versions.get_version(session, d["candidate_version"])
                    assert row is not None
                    # The true difference is that of the versions' own test scores.
                    assert d["candidate_test"]["macro_f1"] == row.metrics["test"]["macro_f1"]
                    gain = d["candidate_test"]["macro_f1"] - d["champion_test"]["macro_f1"]
                    assert d["test_macro_f1_gain"] == pytest.approx(gain, abs=1e-5)
                    assert d["published"] == (row.decision == "published")
                    assert d["decided_by"] in ("end of job", "reviews", "deadline")
                    assert d["reviews"] <= result["config"]["budget"]
                    served_after = run["rounds"][d["round"]]["served_version"]
                    if d["published"]:
                        assert served_after == d["candidate_version"]
                    else:
                        assert served_after == d["champion_version"]
        finally:
            store.dispose()
    gate = result["summary"]["gate"]
    assert set(gate) == {"loop", "gold_only", "gold_random", "loop_teacher"}
    for entry in gate.values():
        assert entry["candidates"] == 2
        assert entry["better"] + entry["not_better"] <= entry["candidates"]


def test_labels_stay_within_the_budget_of_each_round(simulated):
    result, _, _ = simulated
    budget = result["config"]["budget"]
    spent = 0
    for run in result["runs"]:
        for row in run["rounds"][1:]:
            labels = row["labels"]
            assert labels["total"] <= budget
            assert labels["total"] == sum(v for k, v in labels.items() if k != "total")
            spent += labels["total"]
    assert spent > 0
    assert result["summary"]["labels_per_round_max"] <= budget
    random_arm = next(r for r in result["runs"] if r["arm"] == "gold_random")
    assert all("random" in row["labels"] for row in random_arm["rounds"][1:])


def test_results_md_and_the_plot_are_written(simulated):
    result, out, _ = simulated
    md = (out / "results.md").read_text()
    assert "### Served model: test macro-F1 after each round" in md
    assert "### The gate's decisions" in md
    for arm in ARMS:
        assert f"| `{arm}` |" in md
    assert (out / "served.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_test_split_never_enters_what_trains_selects_or_gates(simulated):
    result, out, gold_file = simulated
    test = {t for t, _ in load(SimulateConfig.quick(gold_file=gold_file)).test}
    assert len(test) == result["data"]["test"]
    for arm in ARMS:
        folder = out / "stores" / "seed1" / ("first-model" if arm == "never" else arm)
        store = Store(f"sqlite:///{folder / 'service.db'}")
        try:
            with store.session() as session:
                assert gold.all_texts(session, ("test",)) == test, arm
                assert not test & gold.all_texts(session, ("train", "dev", "gate")), arm
                assert not test & set(session.scalars(select(PseudoLabel.text))), arm
        finally:
            store.dispose()
        run = next(r for r in result["runs"] if r["arm"] == arm)
        if arm != "never":
            assert run["audit"]["test_texts_in_train_dev_gate"] == 0
            assert run["audit"]["test_texts_stored_as_traffic"] == 0
            assert run["audit"]["test_texts_in_gold_test"] == len(test)
