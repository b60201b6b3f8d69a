"""What an operator sees: /metrics agrees with what happened, log lines trace a labeled
text to its stored row by request id, and every model folder is a plain, documented
Hugging Face model."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.core import logs
from app.core.config import Settings
from app.main import create_app
from app.registry import METADATA_FILE, MODEL_CARD_FILE, version_dir
from app.serving import telemetry
from app.store import jobs
from app.store.database import Store
from app.store.tables import PseudoLabel, utcnow
from tests.conftest import ADMIN, RecordingQueue

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient) -> Samples:
    """Every sample of /metrics by (name, sorted labels)."""
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def no_store_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each scrape re-reads the store, so a test sees its own writes at once.
    monkeypatch.setattr(telemetry, "STORE_CACHE_SECONDS", 0.0)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logs.ServiceLogHandler):
            root.removeHandler(handler)


def record_finished_job(
    store: Store, status: str, seconds: float, promoted: bool | None = None
) -> str:
    with store.session() as session:
        job = jobs.create_job(session, {}, 0, "api")
        job.started_at = utcnow()
        jobs.finish(job, status, None if status == "succeeded" else "boom")
        job.finished_at = job.started_at + timedelta(seconds=seconds)
        job.promoted = promoted
        return job.id


# --- /metrics -------------------------------------------------------------------------


def test_metrics_match_what_happened(published_copy: Settings, no_store_cache):
    app = create_app(published_copy, job_queue=RecordingQueue())
    with TestClient(app, headers=ADMIN) as api:
        before = scrape(api)
        answers = [api.post("/label", json={"text": f"@united bag {i}"}).json() for i in (1, 2)]
        batch = api.post("/label/batch", json={"texts": ["great crew", "gate?", "late again"]})
        answers += batch.json()["results"]
        record_finished_job(app.state.store, "succeeded", 120.0, promoted=True)
        record_finished_job(app.state.store, "succeeded", 400.0, promoted=False)
        record_finished_job(app.state.store, "failed", 30.0)
        api.post("/jobs", json={})  # stays queued: the test's queue runs nothing
        after = scrape(api)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert len(answers) == 5
    assert delta("pfp_texts_labeled_total", model_version="1") == 5
    assert delta("pfp_http_requests_total", method="POST", route="/label", status="200") == 2
    # The micro-batcher ran every text exactly once, in one or more forward passes.
    assert delta("pfp_inference_batch_texts_sum") == 5
    assert 1 <= delta("pfp_inference_batch_texts_count") <= 3
    assert value(after, "pfp_inference_queue_texts") == 0
    assert value(after, "pfp_store_writer_pending_requests") == 0

    # The confidence histogram holds exactly the answered confidences, by label.
    for label in {a["label"] for a in answers}:
        mine = [a["confidence"] for a in answers if a["label"] == label]
        key = {"model_version": "1", "label": label}
        assert delta("pfp_pseudo_label_confidence_count", **key) == len(mine)
        assert delta("pfp_pseudo_label_confidence_sum", **key) == pytest.approx(sum(mine))
        for bound in telemetry.CONFIDENCE._upper_bounds:
            le = "+Inf" if bound == float("inf") else str(bound)
            expected = sum(c <= bound for c in mine)
            assert delta("pfp_pseudo_label_confidence_bucket", le=le, **key) == expected

    # Store-wide figures.
    assert value(after, "pfp_store_up") == 1
    assert value(after, "pfp_pseudo_labels_stored") == 5
    assert value(after, "pfp_jobs", status="succeeded") == 2
    assert value(after, "pfp_jobs", status="failed") == 1
    assert value(after, "pfp_jobs", status="queued") == 1
    assert value(after, "pfp_jobs", status="running") == 0
    assert value(after, "pfp_job_duration_seconds_count", outcome="published") == 1
    assert value(after, "pfp_job_duration_seconds_sum", outcome="published") == 120
    assert value(after, "pfp_job_duration_seconds_bucket", outcome="published", le="60.0") == 0
    assert value(after, "pfp_job_duration_seconds_bucket", outcome="published", le="300.0") == 1
    assert value(after, "pfp_job_duration_seconds_count", outcome="rejected") == 1
    assert value(after, "pfp_job_duration_seconds_sum", outcome="failed") == 30
    assert value(after, "pfp_job_duration_seconds_count", outcome="cancelled") == 0

    # The active model, as a number and with its details.
    assert value(after, "pfp_served_model_version") == 1
    assert value(after, "pfp_active_model_version") == 1
    info = value(
        after,
        "pfp_active_model_info",
        version="1",
        labels="negative,neutral,positive",
        job_id="",
        parent_version="",
    )
    assert info == 1


def test_store_figures_are_cached_not_read_per_scrape(published_copy: Settings):
    store = Store(published_copy.store_url)
    collector = telemetry.StoreCollector(store, cache_seconds=60.0)
    assert collector.snapshot().pseudo_labels == 0  # type: ignore[union-attr]
    with store.session() as session:
        session.add(
            PseudoLabel(
                text="x", label="neutral", confidence=0.5, logits=[0, 0, 0], model_version=1
            )
        )
    assert collector.snapshot().pseudo_labels == 0  # type: ignore[union-attr]
    collector.cache_seconds = 0.0
    assert collector.snapshot().pseudo_labels == 1  # type: ignore[union-attr]
    store.dispose()


def test_metrics_answer_while_the_store_is_away(published_copy: Settings):
    store = Store(published_copy.store_url)
    collector = telemetry.StoreCollector(store, cache_seconds=0.0)
    assert collector.snapshot() is not None
    with store.engine.begin() as conn:  # every read of the figures now fails
        conn.exec_driver_sql("DROP TABLE pseudo_labels")
    families = {f.name: f for f in collector.collect()}
    store.dispose()
    assert families["pfp_store_up"].samples[0].value == 0
    assert "pfp_pseudo_labels_stored" in families  # the last good figures, not an error


# --- logs -----------------------------------------------------------------------------


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_json_logs_trace_a_labeled_text_to_its_row(
    published_copy: Settings, capsys: pytest.CaptureFixture[str], restore_logging
):
    settings = published_copy.model_copy(update={"log_format": "json"})
    secret = "@united my passport number is 12345"
    with TestClient(create_app(settings, job_queue=RecordingQueue()), headers=ADMIN) as api:
        capsys.readouterr()
        r = api.post("/label", json={"text": secret}, headers={"X-Request-ID": "req-42.a_b"})
        batch = api.post("/label/batch", json={"texts": ["a", "b"]})
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-42.a_b"
    generated = batch.headers["x-request-id"]
    assert len(generated) == 32
    err = capsys.readouterr().err
    lines = json_lines(err)
    assert lines and len(lines) == len([line for line in err.splitlines() if line.strip()]), err
    stored = [line for line in lines if line["message"].startswith("stored pseudo-label")]
    mine = [line for line in stored if line["request_id"] == "req-42.a_b"]
    assert len(mine) == 1
    body = r.json()
    assert mine[0]["row_id"] == body["id"]
    assert mine[0]["model_version"] == body["model_version"] == 1
    assert mine[0]["label"] == body["label"]
    assert mine[0]["level"] == "INFO" and mine[0]["logger"] == "app.api.routes.label"
    assert {"time", "level", "logger", "request_id", "message"} <= set(mine[0])
    others = [line for line in stored if line["request_id"] == generated]
    assert sorted(line["row_id"] for line in others) == [i["id"] for i in batch.json()["results"]]
    assert "passport" not in err  # texts never reach the logs


@pytest.mark.parametrize(
    "offered",
    ["has space", "a" * 65, "semi;colon", "../etc", "-starts-with-dash", "é", ""],
)
def test_unsafe_request_ids_are_replaced_not_echoed(
    published_copy: Settings, offered: str, capsys: pytest.CaptureFixture[str], restore_logging
):
    settings = published_copy.model_copy(update={"log_format": "json"})
    with TestClient(create_app(settings, job_queue=RecordingQueue()), headers=ADMIN) as api:
        capsys.readouterr()
        headers = {"X-Request-ID": offered.encode()}  # bytes: not ASCII-only
        r = api.post("/label", json={"text": "hello"}, headers=headers)
    assert r.status_code == 200
    replaced = r.headers["x-request-id"]
    assert replaced != offered and len(replaced) == 32 and replaced.isalnum()
    lines = json_lines(capsys.readouterr().err)
    stored = [line for line in lines if line["message"].startswith("stored pseudo-label")]
    assert [line["request_id"] for line in stored] == [replaced]
    assert not offered or all(offered not in json.dumps(line) for line in lines)


def test_text_logs_carry_the_request_id(
    published_copy: Settings, capsys: pytest.CaptureFixture[str], restore_logging
):
    with TestClient(create_app(published_copy, job_queue=RecordingQueue()), headers=ADMIN) as api:
        capsys.readouterr()
        r = api.post("/label", json={"text": "hi"}, headers={"X-Request-ID": "abc-123"})
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "stored pseudo-label" in line)
    assert "[abc-123]" in line and f"id={r.json()['id']} model_version=1" in line


def test_celery_processes_log_json_with_the_task_id(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], restore_logging
):
    from celery.signals import setup_logging, task_postrun, task_prerun

    import workers.celery_app as celery_module

    monkeypatch.setattr(
        celery_module, "get_settings", lambda: Settings(_env_file=None, log_format="json")
    )
    setup_logging.send(sender=None, loglevel="INFO", logfile=None, format="", colorize=False)
    task_prerun.send(sender=None, task_id="task-7", task=None, args=(), kwargs={})
    logging.getLogger("workers.retrain").info("job %s: started", "j1")
    task_postrun.send(sender=None, task_id="task-7", task=None, args=(), kwargs={})
    logging.getLogger("celery.worker").info("idle")
    first, second = json_lines(capsys.readouterr().err)
    assert (first["request_id"], first["message"]) == ("task-7", "job j1: started")
    assert second["request_id"] == "-" and second["logger"] == "celery.worker"


# --- model folders --------------------------------------------------------------------


def test_published_folder_loads_in_plain_transformers_and_has_a_card(published_copy: Settings):
    from transformers import pipeline

    folder = version_dir(published_copy, 1)
    meta = json.loads((folder / METADATA_FILE).read_text())
    config = json.loads((folder / "config.json").read_text())
    labels = ["negative", "neutral", "positive"]
    assert [config["id2label"][str(i)] for i in range(3)] == labels
    assert config["label2id"] == {label: i for i, label in enumerate(labels)}

    classify = pipeline("text-classification", model=str(folder), top_k=None)
    [scores] = classify(["@united great crew thanks"])
    assert {s["label"] for s in scores} == set(labels)
    assert sum(s["score"] for s in scores) == pytest.approx(1.0, abs=1e-5)

    card = (folder / MODEL_CARD_FILE).read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-classification\n")
    assert "# pfp-service model v1" in card
    assert "| parent version | none (the first model) |" in card
    assert "| made by | bootstrap (the first fine-tuning) |" in card
    assert f"`{published_copy.base_model_path}`" in card
    assert "0 `negative`, 1 `neutral`, 2 `positive`" in card
    for split in ("dev", "test"):
        m = meta["metrics"][split]
        assert f"| {split} | {m['accuracy']} | {m['macro_f1']} | {m['n']} |" in card
    assert '"learning_rate"' in card and '"loss"' not in card  # parameters, not curves
    assert 'pipeline("text-classification", model="path/to/v1")' in card


def test_the_card_is_in_the_folder_before_it_appears(
    published_copy: Settings, monkeypatch: pytest.MonkeyPatch
):
    """The card goes into the temporary folder, so no live `v{N}` ever lacks it."""
    import app.registry.folders as registry
    from app.ml.modeling import load_classifier, save_classifier

    seen: dict[str, set[str]] = {}  # folder name put in place -> the files it held
    real_rename = os.rename

    def rename(src, dst):
        if os.path.isdir(src):
            seen[os.path.basename(dst)] = {p.name for p in os.scandir(src)}
        real_rename(src, dst)

    monkeypatch.setattr(registry.os, "rename", rename)
    source = load_classifier(version_dir(published_copy, 1))
    store = Store(published_copy.store_url)
    version = registry.write_version(
        published_copy,
        store,
        lambda folder: save_classifier(source.model, source.tokenizer, folder),
        labels=source.labels,
        parent_version=1,
        job_id="abc123",
        metrics={"dev": {"accuracy": 0.5, "macro_f1": 0.4, "n": 30}},
        lineage={"kind": "retrain", "job_id": "abc123", "params": {"mlm_weight": 1.0}},
        decision="rejected",
    )
    store.dispose()
    assert {MODEL_CARD_FILE, METADATA_FILE, "config.json"} <= seen[f"v{version}"]
    card = (version_dir(published_copy, version) / MODEL_CARD_FILE).read_text()
    assert "| parent version | v1 |" in card and "retraining job `abc123`" in card
    assert "| job decision | rejected" in card and "| dev | 0.5 | 0.4 | 30 |" in card
    assert '"mlm_weight": 1.0' in card
