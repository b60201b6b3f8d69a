"""The promotion gate in a job: on the gate split alone, or waiting for reviews given
through the REST API, re-judged and decided; the deadline, a champion that changed,
cancelling, re-judging twice.

The models are trained for real, but their answers come from rules (a tiny model trained
for seconds answers one class everywhere): the candidate knows each synthetic text's
class from its words, the champion is wrong on a known share of texts. So the gate's
decisions here follow from what is tested, not from training noise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.core.config import Settings
from app.main import create_app
from app.registry import activate, version_dir, write_version
from app.store import gold, jobs, pseudo_labels, reviews, versions
from app.store.database import Store
from app.store.pseudo_labels import Prediction
from app.store.tables import Activation, GoldExample
from tests.conftest import _WORDS, ADMIN, LABELS, RecordingQueue, synthetic_texts
from workers import gate, pipeline, shadow
from workers.retrain import run_retrain_job
from workers.schedule import submit_if_due

SMALL = {"pretrain_max_steps": 2, "finetune_max_steps": 2, "batch_size": 16, "max_length": 32}
TRAFFIC_SEED = 9  # stored texts "... #9x{i}": not gold


def truth(text: str) -> str:
    """A synthetic text's class, from its words (tests/conftest.py `synthetic_texts`)."""
    words = set(text.split())
    return next(label for label, known in _WORDS.items() if words & set(known))


def share(text: str, parts: int) -> int:
    """A text's stable bucket in 0..parts-1."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % parts


def traffic_wrong(text: str) -> bool:
    """The champion's mistakes where the reviews judge: a third of the stored traffic."""
    return f"#{TRAFFIC_SEED}x" in text and share(text, 3) == 0


def gate_wrong(text: str) -> bool:
    """The champion's mistakes everywhere: a quarter of all texts."""
    return share(text, 4) == 0


def answer_by_rules(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, champion_wrong: Callable[[str], bool]
) -> None:
    """Both models answer by rule: the champion (loaded from its version folder) is wrong
    where `champion_wrong` says, naming the next class; the candidate is always right."""
    champion_dir = str(version_dir(settings, 1))

    def predict(classifier: Any, texts: list[str], *_args: Any, **_kwargs: Any) -> list[str]:
        is_champion = str(classifier.model.config.name_or_path) == champion_dir
        out = []
        for text in texts:
            right = truth(text)
            wrong = is_champion and champion_wrong(text)
            out.append(LABELS[(LABELS.index(right) + 1) % 3] if wrong else right)
        return out

    monkeypatch.setattr(pipeline, "predict", predict)
    monkeypatch.setattr(shadow, "predict", predict)


def store_traffic(store: Store, n: int = 180) -> None:
    """Stored traffic of the serving v1: a job holds back its newer half for review."""
    with store.session() as s:
        pseudo_labels.add_predictions(
            s,
            [
                Prediction(t, label, 0.9, [1.0, 0.0, -1.0], 1)
                for t, label in synthetic_texts(n, TRAFFIC_SEED)
            ],
        )


def submit(store: Store, **params: object) -> str:
    with store.session() as s:
        return jobs.create_job(s, {**SMALL, **params}, pseudo_labels.max_id(s), "api").id


def job_row(store: Store, job_id: str) -> jobs.Job:
    with store.session() as s:
        job = jobs.get_job(s, job_id)
        assert job is not None
        s.expunge(job)
        return job


def active(store: Store) -> int | None:
    with store.session() as s:
        return versions.active_version(s)


def decision(store: Store, version: int) -> str:
    with store.session() as s:
        row = versions.get_version(s, version)
        assert row is not None
        return row.decision


@dataclass
class Waiting:
    """A job whose candidate waits for reviews, and the API to review it through."""

    settings: Settings
    store: Store
    api: TestClient
    queue: RecordingQueue
    job_id: str


# Planned for a big gain (a win share of about 0.9 where a quarter of the texts disagree):
# a dozen decisive labels, so the looks come within the 30 disagreements queued.
WAITING = {"promotion.min_gain": 0.2, "promotion.looks": 4}


@contextmanager
def job_waiting(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    champion_wrong: Callable[[str], bool],
    params: dict[str, object],
) -> Iterator[Waiting]:
    """A job run over stored traffic with the models answering by rule, and the API."""
    store = Store(settings.store_url)
    store_traffic(store)
    answer_by_rules(monkeypatch, settings, champion_wrong)
    job_id = submit(store, **params)
    run_retrain_job(job_id, settings, store)
    queue = RecordingQueue()
    with TestClient(create_app(settings, job_queue=queue), headers=ADMIN) as api:
        yield Waiting(settings, store, api, queue, job_id)
    store.dispose()


@pytest.fixture
def waiting(published_copy: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Waiting]:
    with job_waiting(published_copy, monkeypatch, traffic_wrong, WAITING) as w:
        yield w


def open_items(w: Waiting) -> list[dict[str, Any]]:
    r = w.api.get("/review/queues/disagreement/items", params={"job_id": w.job_id, "limit": 500})
    assert r.status_code == 200, r.text
    return r.json()["items"]


def review(w: Waiting, item: dict[str, Any]) -> None:
    """A person labels one item through the REST route, and a worker runs the task the
    route sent."""
    r = w.api.post(f"/review/items/{item['id']}/label", json={"label": truth(item["text"])})
    assert r.status_code == 200, r.text
    assert w.queue.sent[-1] == ("pfp.judge_pending", [w.job_id])
    gate.judge_pending(w.settings, w.store, w.job_id)


# --- decided at once ---------------------------------------------------------------------


def test_a_clearly_better_candidate_is_published_on_the_gate_split_alone(
    published_copy: Settings, monkeypatch: pytest.MonkeyPatch
):
    settings = published_copy
    store = Store(settings.store_url)
    with store.session() as s:  # a bigger gate split than the fixture's 30 texts
        gold.import_gold(
            s, [gold.GoldItem(t, label, "gate") for t, label in synthetic_texts(200, 21)], "t"
        )
        gate_texts = gold.split_counts(s)["gate"]
    store_traffic(store)
    answer_by_rules(monkeypatch, settings, gate_wrong)
    job_id = submit(store)  # the default review wait: the gate split alone decides
    run_retrain_job(job_id, settings, store)
    job = job_row(store, job_id)
    assert job.status == "succeeded" and job.promoted is True, job.decision_reason
    assert active(store) == job.candidate_version
    judged = job.metrics["comparison"]["judged"]
    assert judged["gate_texts"] == gate_texts and judged["queued"] == 0
    assert judged["gate_tally"]["losses"] == 0 and judged["gate_tally"]["wins"] > 40
    reason = job.decision_reason
    assert reason.startswith(f"v1 champion; judged on {gate_texts} gate-split texts")
    assert "look 1 of 4" in reason and "power" in reason and "shown better" in reason
    with store.session() as s:  # nothing asked of people
        assert reviews.counts(s, job_id=job_id)[reviews.DISAGREEMENT]["open"] == 0
    card = (version_dir(settings, job.candidate_version) / "README.md").read_text()
    assert f"| judged on | {gate_texts} gold gate-split texts" in card
    assert "90 recent stored texts outside gold that neither model pre-trained on" in card
    # Those 90, the newer half of the stored traffic, were held back from the pool.
    with store.session() as s:
        lineage = versions.get_version(s, job.candidate_version).lineage
    assert lineage["review_sample"]["texts"] == 90 and lineage["review_sample"]["asked"] == 3000
    assert lineage["pool"]["skipped"]["review_sample"] == 90
    store.dispose()


def test_no_disagreement_at_all_rejects_with_identical_answers(
    published_copy: Settings, monkeypatch: pytest.MonkeyPatch
):
    settings = published_copy
    store = Store(settings.store_url)
    store_traffic(store)
    answer_by_rules(monkeypatch, settings, lambda _text: False)
    job_id = submit(store)
    run_retrain_job(job_id, settings, store)
    job = job_row(store, job_id)
    assert job.status == "succeeded" and job.promoted is False
    assert "identical answers on every text judged" in job.decision_reason
    faster = submit(store, student_layers=1, promotion_rule="faster_no_worse")
    run_retrain_job(faster, settings, store)
    job = job_row(store, faster)
    assert job.promoted is True and "identical answers" in job.decision_reason
    store.dispose()


def test_no_gate_split_and_no_traffic_is_said(published_copy: Settings):
    settings = published_copy.model_copy(update={"review_sample": 0})
    store = Store(settings.store_url)
    store_traffic(store, 30)  # the pool
    with store.session() as s:
        for row in s.scalars(select(GoldExample).where(GoldExample.split == "gate")):
            s.delete(row)
    job_id = submit(store)
    run_retrain_job(job_id, settings, store)
    job = job_row(store, job_id)
    assert job.status == "succeeded" and job.promoted is False
    assert "no gate split and no stored text outside gold was sampled" in job.decision_reason
    store.dispose()


# --- waiting for reviews -------------------------------------------------------------------


def test_a_candidate_waits_for_reviews_and_is_published_by_them(waiting: Waiting):
    w = waiting
    job = job_row(w.store, w.job_id)
    assert (job.status, job.stage, job.promoted, job.finished_at) == (
        "pending_review",
        "review",
        None,
        None,
    )
    candidate = job.candidate_version
    assert decision(w.store, candidate) == "pending" and active(w.store) == 1
    view = w.api.get(f"/jobs/{w.job_id}").json()
    assert view["status"] == "pending_review"
    block = view["review"]
    assert block["verdict"] == "pending" and block["open"] == block["queued"] > 20
    assert block["needs"] > 0 and block["gate_texts"] == 30 and block["traffic_texts"] == 90
    assert f"needs {block['needs']} more reviews to decide (0 of" in block["reason"]
    assert block["looks"] == 4 and block["deadline"].endswith("Z")
    assert "pending review: needs" in view["decision_reason"]
    assert w.api.get("/jobs").json()[0]["review"] == block
    dashboard = w.api.get("/dashboard/fragments/jobs").text
    assert f"pending review: needs {block['needs']} more" in dashboard
    assert 'href="#review-card"' in dashboard
    card = (version_dir(w.settings, candidate) / "README.md").read_text()
    assert "| job decision | pending" in card and "queued for review" in card

    queued = open_items(w)
    labeled = []
    for item in queued:
        review(w, item)
        labeled.append(item["text"])
        if job_row(w.store, w.job_id).status != "pending_review":
            break
    job = job_row(w.store, w.job_id)
    assert job.status == "succeeded" and job.promoted is True, job.decision_reason
    assert len(labeled) < len(queued)  # a look decided before every item was labeled
    assert active(w.store) == candidate and decision(w.store, candidate) == "published"
    reason = job.decision_reason
    assert f"and {len(labeled)} reviewed traffic texts" in reason and "shown better" in reason
    view = w.api.get(f"/jobs/{w.job_id}").json()
    assert view["status"] == "succeeded" and view["review"]["verdict"] == "publish"
    assert view["review"]["open"] == 0  # the rest left the open list
    assert view["review"]["looks_used"] >= 1
    # A label judges once, then teaches: the reviewed texts are gold train now.
    with w.store.session() as s:
        rows = s.execute(select(GoldExample.text, GoldExample.split, GoldExample.source)).all()
    reviewed = {r.text: (r.split, r.source) for r in rows if r.source.startswith("review:")}
    assert reviewed == {t: ("train", "review:disagreement") for t in labeled}
    models = w.api.get("/models").json()
    assert models[0]["version"] == candidate and models[0]["active"]
    assert models[0]["promotion"] == view["metrics"]["comparison"]
    # A label that comes after the decision still teaches.
    late = next(i for i in queued if i["text"] not in labeled)
    review(w, late)
    with w.store.session() as s:
        texts, _ = gold.load_split(s, "train")
    assert late["text"] in texts


def test_rejudging_is_idempotent(waiting: Waiting):
    w = waiting
    before = job_row(w.store, w.job_id).metrics
    assert gate.judge_pending(w.settings, w.store) == []
    assert gate.judge_pending(w.settings, w.store, w.job_id) == []
    assert job_row(w.store, w.job_id).metrics == before  # no look spent on nothing new
    run_retrain_job(w.job_id, w.settings, w.store)  # a duplicate delivery of the job
    with w.store.session() as s:
        assert len(versions.list_versions(s)) == 2
    for item in open_items(w):
        r = w.api.post(f"/review/items/{item['id']}/label", json={"label": truth(item["text"])})
        assert r.status_code == 200
    assert gate.judge_pending(w.settings, w.store) == [w.job_id]
    decided = job_row(w.store, w.job_id)
    with w.store.session() as s:
        activations = len(s.scalars(select(Activation)).all())
        train = gold.split_counts(s)["train"]
    assert gate.judge_pending(w.settings, w.store, w.job_id) == []  # a task run twice
    again = job_row(w.store, w.job_id)
    assert (again.status, again.promoted, again.metrics) == (
        decided.status,
        decided.promoted,
        decided.metrics,
    )
    with w.store.session() as s:
        assert len(s.scalars(select(Activation)).all()) == activations
        assert gold.split_counts(s)["train"] == train


def test_the_deadline_rejects_with_the_reason(waiting: Waiting):
    w = waiting
    deadline = datetime.fromisoformat(job_row(w.store, w.job_id).metrics["comparison"]["deadline"])
    assert gate.judge_pending(w.settings, w.store, now=deadline - timedelta(minutes=1)) == []
    assert job_row(w.store, w.job_id).status == "pending_review"
    assert gate.judge_pending(w.settings, w.store, now=deadline + timedelta(minutes=1)) == [
        w.job_id
    ]
    job = job_row(w.store, w.job_id)
    assert job.status == "succeeded" and job.promoted is False
    assert "the deadline passed" in job.decision_reason
    assert "not shown better" in job.decision_reason
    assert decision(w.store, job.candidate_version) == "rejected" and active(w.store) == 1


def test_a_champion_changed_while_pending_is_not_replaced(waiting: Waiting):
    w = waiting

    other = _bare_version(w.settings, w.store, "published", parent=1)
    activate(w.settings, w.store, other, "an operator's choice")
    for item in open_items(w):
        review(w, item)  # labels that would have published it
        if job_row(w.store, w.job_id).status != "pending_review":
            break
    job = job_row(w.store, w.job_id)
    assert job.status == "succeeded" and job.promoted is False
    assert f"the champion changed from v1 to v{other}" in job.decision_reason
    assert job.metrics["comparison"]["champion_changed_to"] == other
    assert active(w.store) == other
    assert decision(w.store, job.candidate_version) == "rejected"


def test_cancelling_a_waiting_job_rejects_its_candidate_and_keeps_the_labels(waiting: Waiting):
    w = waiting
    first = open_items(w)[0]
    r = w.api.post(f"/review/items/{first['id']}/label", json={"label": truth(first["text"])})
    assert r.status_code == 200
    r = w.api.post(f"/jobs/{w.job_id}/cancel")
    assert r.status_code == 200 and r.json()["cancel_requested"] is True
    assert w.queue.sent[-1] == ("pfp.judge_pending", [w.job_id])
    gate.judge_pending(w.settings, w.store, w.job_id)
    job = job_row(w.store, w.job_id)
    assert job.status == "cancelled" and job.promoted is False
    assert decision(w.store, job.candidate_version) == "rejected" and active(w.store) == 1
    with w.store.session() as s:
        assert first["text"] in gold.load_split(s, "train")[0]
    assert w.api.post(f"/jobs/{w.job_id}/cancel").status_code == 409


def test_beat_starts_no_job_while_one_waits_for_reviews(waiting: Waiting):
    w = waiting
    store_traffic(w.store, 60)
    due = w.settings.model_copy(update={"retrain_min_new_labels": 1})
    assert submit_if_due(due, w.store) is None
    gate.judge_pending(w.settings, w.store, now=datetime.now().astimezone() + timedelta(days=9))
    assert job_row(w.store, w.job_id).status == "succeeded"
    assert submit_if_due(due, w.store) is not None


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_workers_judging_one_job_at_once_decide_it_once(
    settings: Settings, backend: str, request: pytest.FixtureRequest
):
    """Beat's task and the label route's, delivered at the same moment (or one task twice):
    the job's row lock lets one decide; the others find it decided."""
    import threading

    from app.ml.disagreement_test import Tally
    from app.ml.job_params import PromotionParams
    from app.ml.promotion import gate_terms
    from app.registry import PENDING, activate_if_champion

    if backend == "postgresql":
        url = request.getfixturevalue("postgres_url")
        settings = settings.model_copy(update={"database_url": url})
    store = Store(settings.store_url)

    champion = _bare_version(settings, store, "published")
    activate_if_champion(store, champion, None, "first")
    candidate = _bare_version(settings, store, PENDING)
    terms = gate_terms(PromotionParams(looks=2), default_margin=0.0)
    # 40 wins on the gate split; the first look was not taken (as if it were not due).
    judged = gate.Judged(100, Tally(40, 0, 0), 0, 0, 0)
    record = gate.gate_record(terms, judged, None, "waiting", datetime.now().astimezone())
    record["verdict"] = {"verdict": "pending", "looks_used": 0, "looked_at": None}
    job_id = _waiting_job(store, champion, candidate, record)
    outcomes: list[list[str]] = []
    barrier = threading.Barrier(6)

    def look() -> None:
        barrier.wait()
        outcomes.append(gate.judge_pending(settings, store, job_id))

    threads = [threading.Thread(target=look) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == [[]] * 5 + [[job_id]]
    with store.session() as s:
        assert [a.version for a in s.scalars(select(Activation))].count(candidate) == 1
        assert versions.active_version(s) == candidate
        assert jobs.get_job(s, job_id).promoted is True
    store.dispose()


def test_a_waiting_candidate_is_looked_at_as_its_terms_space_the_looks(settings: Settings):
    """Terms kept with `look_spacing: doubling` look at a small share of a large plan, so a
    clearly better candidate is published at once; terms kept before the field existed
    look at equal shares, and the same labels leave the candidate waiting."""
    from app.ml.disagreement_test import Tally
    from app.ml.job_params import PromotionParams
    from app.ml.promotion import gate_terms
    from app.registry import PENDING, activate_if_champion

    store = Store(settings.store_url)

    champion = _bare_version(settings, store, "published")
    activate_if_champion(store, champion, None, "first")
    outcome = {}
    for spacing in ("doubling", "kept before"):
        candidate = _bare_version(settings, store, PENDING)
        params = PromotionParams(looks=8, min_gain=0.01, look_spacing="doubling")
        terms = gate_terms(params, default_margin=0.0)
        # 72 wins, 40 losses on the gate split of 900 texts (13% disagree): p = 0.0017.
        # Every disagreement is labeled and new traffic may bring more: no look is forced.
        judged = gate.Judged(900, Tally(72, 40, 9), 0, 0, 0, traffic_upto=0, queue_limit=500)
        record = gate.gate_record(terms, judged, None, "waiting", datetime.now().astimezone())
        record["verdict"] = {"verdict": "pending", "looks_used": 1, "looked_at": 40}
        record["deadline"] = (datetime.now().astimezone() + timedelta(days=2)).isoformat()
        if spacing == "kept before":
            del record["look_spacing"]
        job_id = _waiting_job(store, champion, candidate, record)
        gate.judge_pending(settings, store, job_id)
        row = job_row(store, job_id)
        outcome[spacing] = (row.status, row.promoted)
        if row.status == "succeeded":
            assert row.metrics["comparison"]["verdict"]["level"] == pytest.approx(0.05 / 8)
            activate(settings, store, champion, "the first again, for the next candidate")
    assert outcome == {"doubling": ("succeeded", True), "kept before": ("pending_review", None)}
    store.dispose()


def _bare_version(
    settings: Settings, store: Store, decision: str, parent: int | None = None
) -> int:
    """A model version with an empty folder: the gate never loads one it only decides on."""

    def save(folder: Path) -> None:
        (folder / "config.json").write_text("{}")

    return write_version(
        settings,
        store,
        save,
        labels=LABELS,
        parent_version=parent,
        job_id=None,
        metrics={},
        lineage={},
        decision=decision,
    )


def _waiting_job(store: Store, champion: int, candidate: int, record: dict[str, Any]) -> str:
    """A job whose candidate waits for reviews with the gate's `record` as its comparison."""
    with store.session() as s:
        job = jobs.create_job(s, {}, 0, "api")
        job.status, job.stage = jobs.PENDING_REVIEW, "review"
        job.champion_version, job.candidate_version = champion, candidate
        job.metrics = {"comparison": record}
        return str(job.id)
