"""The retraining job as a plain function, and the registry it publishes through."""

from __future__ import annotations

import pytest

from app.core.config import Settings
from app.registry import (
    PublishConflict,
    Published,
    activate_if_champion,
    live_version_dirs,
    publish,
    version_dir,
    write_version,
)
from app.store import jobs, pseudo_labels, versions
from app.store.database import Store
from app.store.pseudo_labels import Prediction
from tests.conftest import synthetic_texts
from workers.retrain import run_retrain_job
from workers.schedule import fail_stale_jobs, submit_if_due

# The gate decides at the end of the job here (no review wait): these tests are about
# the job itself; tests/workers/test_gate.py has the waiting.
SMALL = {
    "pretrain_max_steps": 3,
    "finetune_max_steps": 3,
    "batch_size": 16,
    "max_length": 32,
    "promotion_review_hours": 0,
}


def _label_some(store: Store, n: int = 60, version: int = 1) -> None:
    with store.session() as s:
        pseudo_labels.add_predictions(
            s,
            [
                Prediction(t, label, 0.9, [1.0, 0.0, -1.0], version)
                for t, label in synthetic_texts(n, 9)
            ],
        )


def _submit(store: Store, **params) -> str:
    with store.session() as s:
        return jobs.create_job(s, {**SMALL, **params}, pseudo_labels.max_id(s), "api").id


def _job(store: Store, job_id: str):
    with store.session() as s:
        return jobs.get_job(s, job_id)


@pytest.fixture
def ready(published_copy: Settings):
    store = Store(published_copy.store_url)
    _label_some(store)
    yield published_copy, store
    store.dispose()


def test_job_publishes_a_winning_candidate(ready):
    settings, store = ready
    job_id = _submit(store, promotion_margin=-1.0, label_mode="hard", mlm_weight=1.0)
    run_retrain_job(job_id, settings, store)
    job = _job(store, job_id)
    assert job.status == "succeeded", job.error
    assert job.progress == 1.0 and job.promoted is True
    assert set(job.metrics) == {"candidate", "champion", "comparison"}
    for side in ("candidate", "champion"):
        for split in ("dev", "test"):
            assert set(job.metrics[side][split]) == {"accuracy", "macro_f1", "n"}
    comparison = job.metrics["comparison"]
    assert comparison["rule"] == "better" and comparison["publish"] is True
    # The gate split judged: its wins less its losses are the accuracy difference there.
    gate_split = comparison["judged"]["gate_tally"]
    accuracy = {side: job.metrics[side]["gate"]["accuracy"] for side in ("candidate", "champion")}
    assert gate_split["wins"] - gate_split["losses"] == pytest.approx(
        comparison["judged"]["gate_texts"] * (accuracy["candidate"] - accuracy["champion"]),
        abs=1e-3,
    )
    assert 0.0 <= comparison["test_changed_share"] <= 1.0
    assert {"pretraining", "finetuning"} <= set(job.history)
    assert job.history["pretraining"]["mlm_loss"][0] > 5  # MLM head starts near ln(vocab)
    assert job.history["finetuning"]["selection"]["best_step"] in (0, 1, 2, 3)
    with store.session() as s:
        assert versions.active_version(s) == job.candidate_version == 2
        row = versions.get_version(s, 2)
        # The newer half of the 60 stored texts is held back to judge on; 3 pre-training
        # steps of 16 texts would see 48, and the pool has the older 30.
        assert row.parent_version == 1 and row.lineage["review_sample"]["texts"] == 30
        assert row.lineage["pool_texts"] == 30
        pool = row.lineage["pool"]
        assert pool["policy"]["limit"] == 48 and pool["id_range"] == [1, 30]
        assert pool["skipped"]["review_sample"] == 30
    card = (version_dir(settings, 2) / "README.md").read_text()
    assert "| pre-training pool | 30 texts, newest first" in card
    assert "without the 30 texts of the review sample, which judge it" in card
    # Plain Hugging Face format.
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(version_dir(settings, 2)))
    assert clf("@united thanks")[0]["label"] in {"negative", "neutral", "positive"}


def test_losing_candidate_is_recorded_and_not_served(ready):
    settings, store = ready
    job_id = _submit(store, promotion_margin=1.0, label_mode="soft")
    run_retrain_job(job_id, settings, store)
    job = _job(store, job_id)
    assert job.status == "succeeded" and job.promoted is False
    assert "margin" in job.decision_reason
    with store.session() as s:
        assert versions.active_version(s) == 1
        assert versions.get_version(s, job.candidate_version).decision == "rejected"


def test_a_candidate_trained_like_the_champion_does_not_replace_it(ready):
    """Running the same job twice must not swap the served model back and forth: the second
    candidate is no better in expectation, and the gate asks for evidence of a gain."""
    settings, store = ready
    first = _submit(store, promotion_margin=-1.0, seed=1)
    run_retrain_job(first, settings, store)
    assert _job(store, first).promoted is True
    again = _submit(store, seed=2)
    run_retrain_job(again, settings, store)
    job = _job(store, again)
    assert job.status == "succeeded" and job.promoted is False
    comparison = job.metrics["comparison"]
    assert comparison["publish"] is False and "not shown better" in job.decision_reason
    with store.session() as s:
        assert versions.active_version(s) == _job(store, first).candidate_version


def test_a_faster_student_is_published_under_its_rule_and_shown(ready):
    settings, store = ready
    job_id = _submit(
        store,
        student_layers=1,
        promotion_rule="faster_no_worse",
        promotion_tolerance=1.0,
        finetune_max_steps=6,
    )
    run_retrain_job(job_id, settings, store)
    job = _job(store, job_id)
    assert job.status == "succeeded", job.error
    comparison = job.metrics["comparison"]
    assert comparison["candidate_layers"] == 1 and comparison["relative_cost"] == 0.5
    assert comparison["faster"] is True
    assert job.promoted is True, job.decision_reason
    card = (version_dir(settings, job.candidate_version) / "README.md").read_text()
    assert "| encoder layers | 1 |" in card and "faster_no_worse" in card
    assert "0.50 of the champion's" in card
    from transformers import AutoConfig

    assert (
        AutoConfig.from_pretrained(
            str(version_dir(settings, job.candidate_version))
        ).num_hidden_layers
        == 1
    )


def test_cancel_while_running_stops_the_job(ready, monkeypatch):
    settings, store = ready
    job_id = _submit(store, pretrain_max_steps=200)
    from workers import progress

    original = progress.JobReporter.update

    def cancel_once_pretraining(self, fraction, force=False):
        if self.stage == "pretraining" and fraction > 0.01:
            with store.session() as s:
                jobs.get_job(s, job_id).cancel_requested = True
            force = True
        return original(self, fraction, force)

    monkeypatch.setattr(progress.JobReporter, "update", cancel_once_pretraining)
    before = live_version_dirs(settings)
    run_retrain_job(job_id, settings, store)
    job = _job(store, job_id)
    assert job.status == "cancelled" and job.finished_at is not None
    assert live_version_dirs(settings) == before
    assert not list(settings.models_path.glob(".tmp-*"))


def test_job_without_pseudo_labels_fails_with_a_reason(published_copy: Settings):
    store = Store(published_copy.store_url)
    with store.session() as s:
        job_id = jobs.create_job(s, SMALL, 0, "api").id
    run_retrain_job(job_id, published_copy, store)
    job = _job(store, job_id)
    assert job.status == "failed" and "no pseudo-labeled texts" in job.error


def test_finished_job_is_not_run_again(ready):
    settings, store = ready
    job_id = _submit(store, promotion_margin=-1.0)
    run_retrain_job(job_id, settings, store)
    run_retrain_job(job_id, settings, store)  # a duplicate delivery
    with store.session() as s:
        assert len(versions.list_versions(s)) == 2


def test_crash_while_saving_leaves_no_live_folder(settings: Settings, store: Store):
    def broken_save(folder):
        (folder / "config.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_version(
            settings,
            store,
            broken_save,
            labels=["a", "b"],
            parent_version=None,
            job_id=None,
            metrics={},
            lineage={},
            decision="published",
        )
    assert live_version_dirs(settings) == []
    assert not list(settings.models_path.glob(".tmp-*"))
    with store.session() as s:
        assert all(v.state != "ready" for v in versions.list_versions(s))


def test_two_publishers_against_one_champion(settings: Settings, store: Store):
    """Both evaluated against v1; the second to publish is recorded as rejected, with why."""

    def save(folder):
        (folder / "config.json").write_text("{}")

    def publish_against(champion: int | None, reason: str) -> Published:
        return publish(
            settings,
            store,
            save,
            labels=["a"],
            champion=champion,
            wins=True,
            reason=reason,
            job_id=None,
            metrics={},
            lineage={},
        )

    first = publish_against(None, "first")
    job_a = publish_against(first.version, "job A")
    job_b = publish_against(first.version, "job B evaluated against the old champion")
    assert first.promoted and job_a.promoted and not job_b.promoted
    assert job_b.conflict is not None and "changed from v1 to v2" in job_b.conflict
    with store.session() as s:
        assert versions.active_version(s) == job_a.version
        assert versions.get_version(s, job_b.version).decision == "rejected"
        assert versions.get_version(s, job_b.version).state == "ready"  # kept, not served


def test_beat_submits_only_when_enough_new_labels(ready):
    settings, store = ready
    due = settings.model_copy(update={"retrain_min_new_labels": 50})
    not_due = settings.model_copy(update={"retrain_min_new_labels": 61})
    assert submit_if_due(not_due, store) is None
    job_id = submit_if_due(due, store)
    assert job_id is not None
    assert submit_if_due(due, store) is None  # one unfinished job at a time
    with store.session() as s:
        jobs.finish(jobs.get_job(s, job_id), "succeeded")
    assert submit_if_due(due, store) is None  # its pool is used up
    _label_some(store, 60)
    assert submit_if_due(due, store) is not None


def test_stale_running_job_is_marked_failed(ready):
    settings, store = ready
    job_id = _submit(store)
    from datetime import timedelta

    from app.store.tables import utcnow

    with store.session() as s:
        job = jobs.get_job(s, job_id)
        job.status, job.heartbeat_at = "running", utcnow() - timedelta(seconds=120)
    assert fail_stale_jobs(settings.model_copy(update={"job_stale_seconds": 60}), store) == 1
    job = _job(store, job_id)
    assert job.status == "failed" and "worker lost" in job.error


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_publishers_exactly_one_wins(settings: Settings, backend, request):
    """Two jobs finishing at the same moment against the same champion: the activation
    lock lets exactly one publish; the other is told the champion changed."""
    import threading

    if backend == "postgresql":
        url = request.getfixturevalue("postgres_url")
        settings = settings.model_copy(update={"database_url": url})
    store = Store(settings.store_url)

    def save(folder):
        (folder / "config.json").write_text("{}")

    def make() -> int:
        return write_version(
            settings,
            store,
            save,
            labels=["a"],
            parent_version=None,
            job_id=None,
            metrics={},
            lineage={},
            decision="published",
        )

    champion = make()
    activate_if_champion(store, champion, None, "first")
    candidates = [make() for _ in range(6)]
    outcomes: dict[int, str] = {}
    barrier = threading.Barrier(len(candidates))

    def race(version: int) -> None:
        barrier.wait()
        try:
            activate_if_champion(store, version, champion, "race")
            outcomes[version] = "won"
        except PublishConflict:
            outcomes[version] = "conflict"

    threads = [threading.Thread(target=race, args=(v,)) for v in candidates]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [v for v, o in outcomes.items() if o == "won"]
    assert len(outcomes) == len(candidates) and len(winners) == 1, outcomes
    with store.session() as s:
        assert versions.active_version(s) == winners[0]
    store.dispose()
