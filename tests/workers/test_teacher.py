"""A stronger teacher in a retraining job: fine-tuned once, scoring the pool with its scores
kept, never published by a job, and who taught each candidate said in lineage and card."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.config import Settings
from app.ml.job_params import JobParams
from app.registry import version_dir
from app.store import gold, jobs, pseudo_labels, teacher_scores, versions
from app.store.database import Store
from app.store.pseudo_labels import Prediction
from tests.conftest import make_settings, synthetic_texts
from workers.retrain import run_retrain_job
from workers.teacher import student_params

SMALL = {
    "pretrain_max_steps": 3,
    "finetune_max_steps": 3,
    "batch_size": 16,
    "max_length": 32,
    "teacher.finetune_steps": 4,
    "promotion_margin": -1.0,
}


def _label(store: Store, n: int, seed: int) -> None:
    with store.session() as s:
        pseudo_labels.add_predictions(
            s,
            [
                Prediction(t, label, 0.9, [1.0, 0.0, -1.0], 1)
                for t, label in synthetic_texts(n, seed)
            ],
        )


def _run(store: Store, settings: Settings, **params: object) -> jobs.Job:
    with store.session() as s:
        job_id = jobs.create_job(s, {**SMALL, **params}, pseudo_labels.max_id(s), "api").id
    run_retrain_job(job_id, settings, store)
    with store.session() as s:
        job = jobs.get_job(s, job_id)
        assert job is not None
        s.expunge(job)
        return job


@pytest.fixture
def with_teacher(published_copy: Settings, tiny_teacher: Path, gold_file: Path):
    settings = make_settings(
        published_copy.data_dir,
        Path(published_copy.base_model),
        gold_file,
        teacher_model=str(tiny_teacher),
        # Every stored text is the pool here: what the teacher scores is counted exactly.
        review_sample=0,
    )
    store = Store(settings.store_url)
    _label(store, 60, seed=9)
    yield settings, store
    store.dispose()


def test_a_job_fine_tunes_a_teacher_once_and_learns_from_its_scores(with_teacher):
    settings, store = with_teacher
    job = _run(store, settings)
    assert job.status == "succeeded", job.error
    assert job.progress == 1.0
    assert job.decision_reason.startswith("taught by teacher v2;")
    with store.session() as s:
        teacher = versions.get_version(s, 2)
        candidate = versions.get_version(s, job.candidate_version)
        assert teacher.decision == "teacher" and teacher.lineage["kind"] == "teacher"
        assert teacher.lineage["start_path"] == settings.teacher_model
        assert set(teacher.metrics) == {"dev", "test"}
        # a job never serves its teacher, only (here) its student
        assert versions.active_version(s) == job.candidate_version == 3
        taught = candidate.lineage["taught_by"]
        assert taught["kind"] == "stronger" and taught["version"] == 2
        scored = candidate.lineage["pool"]["teacher"]
        assert scored["scored_now"] == candidate.lineage["pool_texts"] == 48
        assert scored["from_cache"] == 0
        assert teacher_scores.count(s, 2) == 48
    card = (version_dir(settings, 3) / "README.md").read_text()
    assert "| taught by | teacher v2, a new teacher fine-tuned from " in card
    assert "it scored 48 pool texts now" in card
    teacher_card = (version_dir(settings, 2) / "README.md").read_text()
    assert "A teacher made by pfp-service" in teacher_card
    assert f"| base model | `{settings.teacher_model}` |" in teacher_card
    assert f"| base model | `{settings.base_model_path}` |" in card

    # The next job reuses the teacher and pays only for the texts it has not scored.
    _label(store, 8, seed=10)
    again = _run(store, settings)
    assert again.status == "succeeded", again.error
    with store.session() as s:
        assert [v.version for v in versions.list_versions(s) if v.decision == "teacher"] == [2]
        scored = versions.get_version(s, again.candidate_version).lineage["pool"]["teacher"]
        assert scored["version"] == 2
        assert scored["scored_now"] == 8 and scored["from_cache"] == 40
        assert teacher_scores.count(s, 2) == 56


def test_a_student_of_the_stronger_teacher_takes_more_passes_over_its_pool(with_teacher):
    settings, store = with_teacher
    # 2 steps cover 32 texts at batch 16: the pool; its student takes 3 passes, 6 steps.
    by_epochs = {"pretrain_max_steps": 0, "pretrain.epochs": 1, "pretrain.step_budget": 2}
    job = _run(store, settings, **by_epochs)
    assert job.status == "succeeded", job.error
    assert job.history["pretraining"]["step"][-1] + 1 == 6
    with store.session() as s:
        lineage = versions.get_version(s, job.candidate_version).lineage
    assert lineage["pool_texts"] == 32
    assert lineage["taught_by"]["pool_passes"] == 3.0
    assert lineage["params"]["pretrain"]["epochs"] == 1.0  # as submitted
    card = (version_dir(settings, job.candidate_version) / "README.md").read_text()
    assert "the student took 3x the passes over the pool" in card
    # The serving model as teacher: one pass, as pretrain.* say.
    served = _run(store, settings, **by_epochs, **{"teacher.source": "serving"})
    assert served.status == "succeeded", served.error
    assert served.history["pretraining"]["step"][-1] + 1 == 2


def test_more_passes_never_take_pretraining_past_its_bounds():
    params = JobParams.model_validate({"pretrain.epochs": 50, "teacher.pool_passes": 20})
    assert student_params(params).pretrain.epochs == 100.0  # pretrain.epochs' own bound
    default = student_params(JobParams())
    assert (default.pretrain.epochs, default.pretrain.step_budget) == (3.0, 1200)


def test_the_teacher_scores_are_its_own_logits_not_the_stored_ones(with_teacher):
    settings, store = with_teacher
    job = _run(store, settings)
    assert job.status == "succeeded", job.error
    from app.ml.modeling import load_classifier

    teacher = load_classifier(version_dir(settings, 2), settings.max_length)
    text = synthetic_texts(60, 9)[-1][0]
    with store.session() as s:
        kept = teacher_scores.cached(s, 2, [gold.text_digest(text)])[gold.text_digest(text)]
    fresh = teacher.logits([text])[0].tolist()
    assert kept == pytest.approx(fresh, abs=0.05)  # bf16 where the CPU has it
    assert kept != pytest.approx([1.0, 0.0, -1.0], abs=0.05)  # not the stored prediction


def _refreshed(store: Store, settings: Settings, refresh_steps: int) -> jobs.Job:
    """A job run after a first one made teacher v2 and gold train then grew past the
    refresh share."""
    assert _run(store, settings).status == "succeeded"
    with store.session() as s:
        extra = [gold.GoldItem(t, lbl, "train") for t, lbl in synthetic_texts(200, 77)]
        gold.import_gold(s, extra, "test")
    grown = {"teacher.refresh_growth": 0.5, "teacher.refresh_steps": refresh_steps}
    job = _run(store, settings, **grown)
    assert job.status == "succeeded", job.error
    return job


def test_gold_grown_past_the_refresh_share_fine_tunes_the_newest_teacher_further(with_teacher):
    settings, store = with_teacher
    job = _refreshed(store, settings, refresh_steps=2)
    with store.session() as s:
        teachers = [v for v in versions.list_versions(s) if v.decision == "teacher"]
        assert [v.version for v in teachers] == [4, 2]
        newest = teachers[0]
        taught = versions.get_version(s, job.candidate_version).lineage["taught_by"]
        assert taught["version"] == newest.version
        assert "teacher v2 fine-tuned further on all of gold train" in taught["reason"]
        assert "gold train grew" in taught["reason"]
        assert newest.parent_version == 2
        assert newest.lineage["warm_from"] == 2 and newest.lineage["finetune_steps"] == 2
        assert newest.lineage["start_path"] == str(version_dir(settings, 2))
        assert newest.lineage["base_encoder"] == settings.teacher_model
        assert newest.lineage["gold_train"] > teachers[1].lineage["gold_train"]
        # It scored the pool anew: the texts' old scores are the older teacher's.
        scored = versions.get_version(s, job.candidate_version).lineage["pool"]["teacher"]
        assert scored["version"] == 4 and scored["from_cache"] == 0
    card = (version_dir(settings, 4) / "README.md").read_text()
    assert f"| base model | `{settings.teacher_model}` |" in card
    assert f"| started from | `{version_dir(settings, 2)}` |" in card
    assert "teacher v2 fine-tuned further on " in card


def test_a_refresh_with_no_steps_of_its_own_fine_tunes_the_encoder_again(with_teacher):
    settings, store = with_teacher
    job = _refreshed(store, settings, refresh_steps=0)
    with store.session() as s:
        newest = next(v for v in versions.list_versions(s) if v.decision == "teacher")
        taught = versions.get_version(s, job.candidate_version).lineage["taught_by"]
    assert newest.version == 4 and newest.parent_version is None
    assert newest.lineage["start_path"] == settings.teacher_model
    assert newest.lineage["finetune_steps"] == SMALL["teacher.finetune_steps"]
    assert taught["reason"].startswith("a new teacher from ")


def test_without_a_teacher_installed_the_serving_model_teaches_and_says_why(ready_store):
    settings, store = ready_store
    job = _run(store, settings)
    assert job.status == "succeeded", job.error
    with store.session() as s:
        taught = versions.get_version(s, job.candidate_version).lineage["taught_by"]
    assert taught["kind"] == "serving"
    assert "no stronger teacher is installed" in taught["reason"]
    assert "make teacher" in taught["reason"]


def test_asking_for_a_stronger_teacher_that_is_not_there_fails_clearly(ready_store):
    settings, store = ready_store
    job = _run(store, settings, **{"teacher.source": "stronger"})
    assert job.status == "failed"
    assert "make teacher" in job.error and "TEACHER_MODEL" in job.error


def test_a_teacher_version_that_is_not_one_is_refused(with_teacher):
    settings, store = with_teacher
    job = _run(store, settings, **{"teacher.version": 1})  # v1 is the served champion
    assert job.status == "failed"
    assert "v1 is not a ready teacher version" in job.error


@pytest.fixture
def ready_store(published_copy: Settings):
    store = Store(published_copy.store_url)
    _label(store, 60, seed=9)
    yield published_copy, store
    store.dispose()
