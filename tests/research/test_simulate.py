"""`python -m research.simulate --quick`: every arm runs its rounds on a real store through
the service's own paths, and results.json, results.md and served.png say what a reader
checks: the served model's test macro-F1 after every round, every gate decision beside
the candidate's true test difference, labels within the budget, and a test split that
never entered what trains, selects or gates."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from app.core.config import Settings
from app.store import gold, versions
from app.store.database import Store
from app.store.tables import Job, PseudoLabel
from research.simulate.__main__ import build_parser, config_from, main
from research.simulate.config import ARMS_BY_NAME, DEFAULT_ARMS, TAUGHT_ARMS, SimulateConfig
from research.simulate.data import load
from research.simulate.replay import markdown, replay
from research.simulate.report import markdown as report_markdown
from research.simulate.run import KeptRuns
from research.simulate.service import Service
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
    gold_file = write_gold_file(folder / "gold.jsonl", n=700)
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
    config = result["config"]
    assert config["rounds"] == 2 and config["seeds"] == [1]
    # The rounds with a job, then one in which the last candidates may wait.
    rounds = config["rounds"] + config["wait_rounds"]
    assert config["wait_rounds"] == 1
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
        rounds = result["config"]["rounds"]
        jobs = [row["job"] for row in run["rounds"][1 : rounds + 1]]
        # No job runs in the round after the last: only waiting candidates are reviewed.
        assert [row["job"] for row in run["rounds"][rounds + 1 :]] == [None]
        # A candidate may wait for the next round's traffic; by the end each is decided.
        assert all(job["status"] in ("succeeded", "pending_review") for job in jobs), jobs
        assert len(run["decisions"]) == len(jobs)
        store = Store(f"sqlite:///{out / 'stores' / 'seed1' / run['arm'] / 'service.db'}")
        try:
            with store.session() as session:
                for job in jobs:
                    assert session.get(Job, job["id"]).status == "succeeded"
                for d in run["decisions"]:
                    row = versions.get_version(session, d["candidate_version"])
                    assert row is not None
                    # The true difference is that of the versions' own test scores.
                    assert d["candidate_test"]["macro_f1"] == row.metrics["test"]["macro_f1"]
                    gain = d["candidate_test"]["macro_f1"] - d["champion_test"]["macro_f1"]
                    assert d["test_macro_f1_gain"] == pytest.approx(gain, abs=1e-5)
                    assert d["published"] == (row.decision == "published")
                    assert d["decided_by"] in ("end of job", "reviews", "deadline", "superseded")
                    assert d["reviews"] <= (1 + d["waited_rounds"]) * result["config"]["budget"]
                    served_after = run["rounds"][d["round"]]["served_version"]
                    if d["waited_rounds"]:  # decided before that round's own job ran
                        continue
                    if d["published"]:
                        assert served_after == d["candidate_version"]
                    else:
                        assert served_after == d["champion_version"]
        finally:
            store.dispose()
    gate = result["summary"]["gate"]
    assert set(gate) == {"loop", "gold_only", "gold_random", "loop_teacher", "all"}
    for arm, entry in gate.items():
        assert entry["candidates"] == (8 if arm == "all" else 2)
        assert entry["better"] + entry["not_better"] <= entry["candidates"]
    pooled = gate["all"]
    assert pooled["published"] == sum(g["published"] for a, g in gate.items() if a != "all")


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
    rounds = result["config"]["rounds"]
    assert all("random" in row["labels"] for row in random_arm["rounds"][1 : rounds + 1])


def test_results_md_and_the_plot_are_written(simulated):
    result, out, _ = simulated
    md = (out / "results.md").read_text()
    assert "### Served model: test macro-F1 after each round" in md
    assert "### The gate's decisions" in md
    for arm in ARMS:
        assert f"| `{arm}` |" in md
    assert (out / "served.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Summarized while an arm has no record kept yet (another process still runs it): the
    # arm has no row, rather than an empty one.
    partial = {**result, "summary": {**result["summary"]}}
    partial["summary"]["served"] = {**result["summary"]["served"], "loop_teacher": []}
    served_table = report_markdown(partial).split("### Arms against each other")[0]
    assert "| `loop_teacher` |" not in served_table
    assert "| `loop` |" in served_table


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


def test_gold_only_jobs_get_the_steps_of_the_taught_loop_they_are_compared_with(simulated):
    result, out, gold_file = simulated
    assert result["gold_steps_matched_to"] == "loop_teacher"
    settings = Settings(
        data_dir=out / "stores" / "seed1" / "gold_only", database_url="", redis_url=""
    )
    service = Service(settings, gold_only=True, match_taught=True)
    plain = Service(settings, gold_only=True, match_taught=False)
    try:
        params = SimulateConfig.quick(gold_file=gold_file).params(ARMS_BY_NAME["gold_only"], 1)
        taught, untaught = (
            service.matched_finetune_steps(params),
            plain.matched_finetune_steps(params),
        )
    finally:
        service.worker_store.dispose()
        plain.worker_store.dispose()
    # The taught student pre-trains `pool_passes` times as long; fine-tuning is the same.
    assert taught > untaught
    assert SimulateConfig.quick(arms=["loop", "gold_only"]).matched_arm() == "loop"


def test_a_second_run_into_the_same_folder_reuses_every_arm_and_summarizes_the_same(
    simulated, tmp_path, tiny_base, tiny_teacher, capsys
):
    result, out, gold_file = simulated
    again = tmp_path / "again"
    shutil.copytree(out / "runs", again / "runs")
    # The same sizes, data and models, without --keep-stores (not part of what is compared).
    argv = ["--quick", "--gold-file", str(gold_file), "--arms", ",".join(ARMS)]
    argv += ["--base-model", str(tiny_base), "--teacher", str(tiny_teacher)]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_status:
        main([*argv, "--out", str(again), *FAST])
    assert exit_status.value.code == 0
    progress = capsys.readouterr().err
    assert "the first model" not in progress  # nothing ran again
    for arm in ARMS:
        assert f"seed 1 · {arm}: kept from" in progress
    rerun = json.loads((again / "results.json").read_text())
    assert rerun["runs"] == result["runs"]
    assert rerun["summary"] == result["summary"]


def test_other_sizes_run_again_and_a_live_claim_is_left_to_its_process(tmp_path):
    config = SimulateConfig.quick()
    kept = KeptRuns(tmp_path, config)
    record = {"seed": 1, "arm": "never", "rounds": [], "decisions": []}
    kept.save(record)
    assert kept.load(1, "never") == record
    assert KeptRuns(tmp_path, SimulateConfig.quick(rounds=3)).load(1, "never") is None
    with subprocess.Popen(["sleep", "30"]) as other:
        kept.path(1, "loop").with_suffix(".claimed").write_text(str(other.pid))
        assert not kept.claim(1, "loop")
        other.kill()
    other.wait()
    assert kept.claim(1, "loop")  # its process is gone: taken over
    kept.release(1, "loop")
    assert not kept.path(1, "loop").with_suffix(".claimed").exists()


def test_two_processes_share_the_arms_and_the_outputs_cover_them_all(tmp_path, tiny_base, capsys):
    gold_file = write_gold_file(tmp_path / "gold.jsonl", n=700)
    out = tmp_path / "out"
    arms = ["gold_only", "gold_random", "never"]
    argv = ["--quick", "--gold-file", str(gold_file), "--base-model", str(tiny_base)]
    with pytest.raises(SystemExit) as exit_status:
        main([*argv, "--arms", ",".join(arms), "--processes", "2", "--out", str(out), *FAST])
    assert exit_status.value.code == 0
    result = json.loads((out / "results.json").read_text())
    assert sorted(r["arm"] for r in result["runs"]) == sorted(arms)
    # Both processes ran arms; the last pass only read what they kept.
    assert len({r["process"] for r in result["runs"]}) == 2
    assert os.getpid() not in {r["process"] for r in result["runs"]}
    assert not list((out / "runs").glob("*.claimed"))
    assert set(result["summary"]["served"]) == set(arms)


def test_an_installed_teacher_makes_the_taught_loop_the_default_arm(
    tmp_path, tiny_teacher, monkeypatch
):
    monkeypatch.setenv("TEACHER_MODEL", str(tmp_path / "not-installed"))
    plain = config_from(build_parser().parse_args([]), None)
    assert plain.teacher is None and plain.arms == DEFAULT_ARMS
    monkeypatch.setenv("TEACHER_MODEL", str(tiny_teacher))
    taught = config_from(build_parser().parse_args([]), None)
    assert taught.teacher == tiny_teacher
    assert taught.arms == TAUGHT_ARMS and taught.matched_arm() == "loop_teacher"
    # Arms asked for are kept.
    asked = config_from(build_parser().parse_args(["--arms", "loop,never"]), None)
    assert asked.arms == ["loop", "never"]


def test_replaying_a_run_with_the_gate_that_made_it_gives_its_decisions(simulated):
    result, _, _ = simulated
    replayed = replay(result)
    rows = replayed["decisions"]
    assert len(rows) == sum(len(r["decisions"]) for r in result["runs"])
    judged = [r for r in rows if r["p_value"] is not None]
    assert judged, "no decision had a test to replay"
    assert all(r["replayed"] == r["published"] for r in rows)
    every = replayed["summary"]["all"]
    assert every["candidates"] == len(rows)
    # How far the judged texts' accuracy gain was from the test split's, with its interval.
    gaps = [r["seen_gain"] - r["test_accuracy_gain"] for r in rows if r["seen_gain"] is not None]
    assert every["mean_seen_minus_test"] == pytest.approx(sum(gaps) / len(gaps), abs=1e-5)
    if len(gaps) > 1:
        low, high = every["seen_minus_test_ci95"]
        assert low <= every["mean_seen_minus_test"] <= high
        assert f"[{low * 100:+.2f}, {high * 100:+.2f}]" in markdown(replayed)


def test_a_decision_line_of_the_older_gate_is_judged_at_what_its_looks_left():
    reason = (
        "v1 champion; judged on 34 gate-split texts (0 disagreements) and 130 reviewed traffic "
        "texts (of 130 disagreements in 1000 recent stored texts): 70 wins, 48 losses, 12 ties "
        "on 130 labeled disagreements (disagreement rate 13.0%); exact test p=0.0264 against a "
        "win share of 0.500 (look 1 of 4, at most 0.0125), power 6% for a gain of +1.0% with "
        "118 of the 900 decisive labels planned: not shown better than the margin +0.0%"
    )
    decision = {
        "round": 1,
        "test_macro_f1_gain": 0.02,
        "test_accuracy_gain": 0.01,
        "published": False,
        "reason": reason,
    }
    result = {
        "job": {"promotion": {"margin": None, "min_gain": 0.01, "confidence": 0.95, "power": 0.8}},
        "runs": [{"seed": 1, "arm": "loop", "decisions": [decision]}],
    }
    (row,) = replay(result)["decisions"]
    assert row["run_level"] == 0.0125 and row["level"] == pytest.approx(0.05)
    assert row["p_value"] == pytest.approx(0.0264, abs=1e-3)
    assert not row["published"] and row["replayed"]
    # 70 wins and 48 losses of 130 labeled where the models disagree on 13% of texts.
    assert row["seen_gain"] == pytest.approx(0.13 * 22 / 130)


def test_a_candidate_that_cannot_be_decided_in_its_round_waits_for_later_rounds_traffic(
    tmp_path, tiny_base
):
    """Planned for a small gain at one look, a round's reviews cannot decide a candidate: it
    waits, each later round's traffic is scored for it (batches as large as its review
    sample), its new disagreements are labeled within that round's budget, and after two
    rounds of waiting at most it is decided; the last round's candidate waits through the
    rounds with no job."""
    gold_file = write_gold_file(tmp_path / "gold.jsonl", n=800)
    out = tmp_path / "out"
    argv = ["--quick", "--gold-file", str(gold_file), "--base-model", str(tiny_base)]
    small_gain = ["--param", "promotion.min_gain=0.02", "--param", "promotion.looks=1"]
    waits = ["--wait-rounds", "2"]
    with pytest.raises(SystemExit) as exit_status:
        main(
            [*argv, "--arms", "gold_only", "--keep-stores", "--out", str(out), *FAST]
            + small_gain
            + waits
        )
    assert exit_status.value.code == 0
    run = json.loads((out / "results.json").read_text())["runs"][0]
    job_round = {row["job"]["id"]: row["round"] for row in run["rounds"][1:3]}
    assert [row["job"] for row in run["rounds"][3:]] == [None, None]
    assert sorted(d["job_id"] for d in run["decisions"]) == sorted(job_round)
    waited = [d for d in run["decisions"] if d["waited_rounds"]]
    assert waited, run["decisions"]
    for d in waited:
        assert 1 <= d["waited_rounds"] <= 2
        assert d["round"] == job_round[d["job_id"]] + d["waited_rounds"]
        assert d["decided_by"] in ("reviews", "deadline", "superseded")
        # Shown new traffic, labeled within the budgets of the rounds it waited through.
        assert d["traffic_batches"] >= 1
        rows = run["rounds"][job_round[d["job_id"]] : d["round"] + 1]
        assert d["reviews"] <= sum(row["labels"]["reviews"] for row in rows)
    assert all(row["labels"]["total"] <= 24 for row in run["rounds"][1:])
    store = Store(f"sqlite:///{out / 'stores' / 'seed1' / 'gold_only' / 'service.db'}")
    try:
        with store.session() as session:
            job = session.get(Job, waited[0]["job_id"])
            assert job is not None and job.status == "succeeded"
            judged = job.metrics["comparison"]["judged"]
    finally:
        store.dispose()
    assert judged["traffic_upto"] is not None and judged["traffic_batch"] > 0
