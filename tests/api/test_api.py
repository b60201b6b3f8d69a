"""The HTTP API on a tiny published model, with a recording job queue instead of Celery."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from app.ml.serving_forms import Form
from app.store import jobs, pseudo_labels, versions
from app.store.database import Store
from tests.conftest import ADMIN, RecordingQueue
from workers.retrain import run_retrain_job


def _stored(store: Store) -> list:
    with store.session() as s:
        return pseudo_labels.list_pseudo_labels(s, limit=10_000)


def test_label_answers_and_stores(api):
    r = api.post("/label", json={"text": "@united lost my bag again"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == 1
    assert set(body["scores"]) == {"negative", "neutral", "positive"}
    assert body["label"] == max(body["scores"], key=body["scores"].get)
    assert body["confidence"] == pytest.approx(body["scores"][body["label"]])
    assert sum(body["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    [row] = _stored(api.store)
    assert (row.id, row.text, row.label, row.model_version) == (
        body["id"],
        "@united lost my bag again",
        body["label"],
        1,
    )
    assert len(row.logits) == 3 and row.created_at is not None


def test_batch_keeps_order_and_odd_text_exactly(api):
    texts = ["@jetblue love it 😍", "  leading spaces", "naïve café \t tab", "x" * 5000, "普通话 ✈️"]
    r = api.post("/label/batch", json={"texts": texts})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(texts)
    single = [api.post("/label", json={"text": t}).json() for t in texts]
    assert [x["label"] for x in results] == [x["label"] for x in single]
    stored = {row.id: row.text for row in _stored(api.store)}
    assert [stored[x["id"]] for x in results] == texts


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/label", {}, 422, "text"),
        ("/label", {"text": ""}, 422, "non-whitespace"),
        ("/label", {"text": "   \n\t"}, 422, "non-whitespace"),
        ("/label", {"text": 42}, 422, "string"),
        ("/label", {"text": ["a"]}, 422, "string"),
        ("/label", {"text": "a\x00b"}, 422, "NUL"),
        ("/label", {"text": "ok", "extra": 1}, 422, "extra"),
        ("/label", {"text": "y" * 10_001}, 413, "limit is 10000"),
        ("/label/batch", {"texts": []}, 422, "at least 1"),
        ("/label/batch", {"texts": ["fine", " "]}, 422, "texts[1]"),
        ("/label/batch", {"texts": "not a list"}, 422, "list"),
        ("/label/batch", {"texts": ["z"] * 257}, 413, "limit is 256"),
        ("/gold", {"examples": []}, 422, "at least 1"),
        ("/gold", {"examples": [{"text": "t", "label": "angry"}]}, 422, "unknown labels ['angry']"),
        (
            "/gold",
            {"examples": [{"text": "t", "label": "neutral", "split": "holdout"}]},
            422,
            "split",
        ),
        ("/gold", {"examples": [{"text": " ", "label": "neutral"}]}, 422, "non-whitespace"),
        ("/jobs", {"mlm_weight": -1}, 422, "mlm_weight"),
        ("/jobs", {"label_mode": "fuzzy"}, 422, "label_mode"),
        ("/jobs", {"learning_rate": 1}, 422, "learning_rate"),
        ("/jobs", {"pretrain": {"epochs": 2}, "pretrain_epochs": 3}, 422, "given twice"),
        ("/jobs", {"finetune.nothing": 1}, 422, "finetune.nothing"),
        ("/jobs/nope/cancel", None, 404, "no job"),
        ("/models/99/activate", None, 404, "no model version 99"),
        ("/models/0/activate", None, 422, "version"),
        ("/models/abc/activate", None, 422, "version"),
        ("/models/9223372036854775808/activate", None, 422, "version"),
        ("/models/2147483648/activate", None, 422, "version"),
    ],
)
def test_bad_input_is_refused_clearly_and_stores_nothing(api, path, body, status, fragment):
    r = api.post(path, json=body) if body is not None else api.post(path)
    assert r.status_code == status, r.text
    assert fragment in r.text
    assert _stored(api.store) == []
    with api.store.session() as s:
        assert jobs.list_jobs(s) == []
        assert versions.active_version(s) == 1
    assert api.queue.sent == []


def test_malformed_json_is_refused(api):
    r = api.post("/label", content=b'{"text": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    assert _stored(api.store) == []


def test_unknown_job_is_404(api):
    r = api.get("/jobs/does-not-exist")
    assert r.status_code == 404 and "no job with id" in r.json()["detail"]


def test_labels_pages_filters_and_export(api):
    ids = [
        x["id"]
        for x in api.post("/label/batch", json={"texts": [f"t{i}" for i in range(7)]}).json()[
            "results"
        ]
    ]
    page = api.get("/labels", params={"limit": 4}).json()
    assert [x["id"] for x in page["items"]] == ids[:4] and page["next_after_id"] == ids[3]
    rest = api.get("/labels", params={"limit": 4, "after_id": page["next_after_id"]}).json()
    assert [x["id"] for x in rest["items"]] == ids[4:] and rest["next_after_id"] is None
    assert api.get("/labels", params={"model_version": 2}).json()["items"] == []
    assert api.get("/labels", params={"min_confidence": 2}).status_code == 422
    # Numbers past what the store holds are refused, not passed to the database driver.
    assert api.get("/labels", params={"after_id": 2**63}).status_code == 422
    assert api.get("/labels", params={"model_version": 2**31}).status_code == 422
    assert api.get("/labels/export", params={"model_version": 2**31}).status_code == 422
    export = api.get("/labels/export")
    assert export.status_code == 200
    lines = export.text.strip().split("\n")
    assert len(lines) == 7 and '"text": "t0"' in lines[0]


def test_gold_import_and_duplicates(api):
    body = {
        "examples": [
            {"text": "new gold one", "label": "neutral", "split": "dev"},
            {"text": "new gold two", "label": "positive"},
        ]
    }
    first = api.post("/gold", json=body).json()
    assert first["inserted"] == 2 and first["skipped_duplicates"] == 0
    again = api.post("/gold", json=body).json()
    assert again["inserted"] == 0 and again["skipped_duplicates"] == 2
    assert again["split_counts"]["dev"] == first["split_counts"]["dev"]


def test_job_submit_run_and_swap(api):
    assert api.post("/jobs", json={}).status_code == 409  # nothing labeled yet
    api.post("/label/batch", json={"texts": [f"@united bag lost {i}" for i in range(40)]})
    r = api.post(
        "/jobs",
        json={
            "pretrain_max_steps": 2,
            "finetune_max_steps": 2,
            "promotion_margin": -1,
            "batch_size": 8,
        },
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.json()["status"] == "queued"
    assert api.queue.sent == [("pfp.retrain", [job_id])]
    view = api.get(f"/jobs/{job_id}").json()
    assert view["status"] == "queued" and view["progress"] == 0.0
    # What the worker would do:
    run_retrain_job(job_id, api.settings, api.store)
    view = api.get(f"/jobs/{job_id}").json()
    assert view["status"] == "succeeded" and view["promoted"] is True
    assert view["metrics"]["candidate"]["dev"]["macro_f1"] >= 0
    deadline = time.monotonic() + 10
    while api.post("/label", json={"text": "hello"}).json()["model_version"] != 2:
        assert time.monotonic() < deadline, "the API never swapped to v2"
        time.sleep(0.1)
    models = api.get("/models").json()
    assert [m["version"] for m in models] == [2, 1]
    assert models[0]["active"] and models[0]["parent_version"] == 1
    assert models[0]["lineage"]["kind"] == "retrain"
    # What the gate saw, and the depth of each version, are part of the answer.
    assert models[0]["layers"] == models[1]["layers"] == 2
    assert models[0]["promotion"]["rule"] == "better" and models[1]["promotion"] is None
    assert models[0]["promotion"] == view["metrics"]["comparison"]
    fragment = api.get("/dashboard/fragments/versions").text
    assert "better: gain" in fragment and "answers changed" in fragment
    assert "better: gain" in api.get("/dashboard/fragments/active").text  # v2 serves now
    # Roll back.
    r = api.post("/models/1/activate")
    assert r.status_code == 200 and r.json()["active"]
    active = api.get("/models/active").json()
    assert active["version"] == active["served_version"] == 1
    assert api.post("/label", json={"text": "hello"}).json()["model_version"] == 1


def test_job_parameters_in_every_shape_are_stored_and_shown_nested(api):
    """Flat bodies (as before the sections), dotted and nested ones are the same job; a job
    stored flat by an older release is shown nested too, every default filled in."""
    from app.ml.job_params import JobParams

    api.post("/label", json={"text": "something"})
    bodies = [
        {"pretrain_epochs": 2, "label_mode": "hard", "promotion_margin": -1, "batch_size": 8},
        {
            "pretrain.epochs": 2,
            "pretrain.label_mode": "hard",
            "promotion.margin": -1,
            "batch_size": 8,
        },
        {
            "pretrain": {"epochs": 2, "label_mode": "hard"},
            "promotion": {"margin": -1},
            "batch_size": 8,
        },
    ]
    views = []
    for body in bodies:
        r = api.post("/jobs", json=body)
        assert r.status_code == 202, r.text
        views.append(api.get(f"/jobs/{r.json()['id']}").json()["params"])
    expected = JobParams.model_validate(bodies[0]).model_dump()
    assert views == [expected] * 3
    assert views[0]["pretrain"]["epochs"] == 2 and views[0]["promotion"]["margin"] == -1
    with api.store.session() as s:
        old = jobs.create_job(s, {"finetune_patience": 1, "seed": 3}, 1, "api").id
        unreadable = jobs.create_job(s, {"no_such_knob": 1}, 1, "api").id
    shown = api.get(f"/jobs/{old}").json()["params"]
    assert shown == JobParams.model_validate({"finetune": {"patience": 1}, "seed": 3}).model_dump()
    assert api.get(f"/jobs/{unreadable}").json()["params"] == {"no_such_knob": 1}
    assert len(api.get("/jobs").json()) == 5
    # The worker refuses the job it cannot read, with the reason, instead of leaving it queued.
    run_retrain_job(unreadable, api.settings, api.store)
    failed = api.get(f"/jobs/{unreadable}").json()
    assert failed["status"] == "failed" and "no_such_knob" in failed["error"]


def test_cancel_queued_job_and_cannot_cancel_twice(api):
    api.post("/label", json={"text": "something"})
    job_id = api.post("/jobs").json()["id"]
    r = api.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert api.post(f"/jobs/{job_id}/cancel").status_code == 409
    run_retrain_job(job_id, api.settings, api.store)  # a late delivery does nothing
    assert api.get(f"/jobs/{job_id}").json()["status"] == "cancelled"


def test_queue_down_gives_503_and_leaves_no_job(published_copy: Settings):
    app = create_app(published_copy, job_queue=RecordingQueue(fail=True))
    with TestClient(app, headers=ADMIN) as client:
        client.post("/label", json={"text": "something"})
        r = client.post("/jobs")
        assert r.status_code == 503 and "job queue is unavailable" in r.json()["detail"]
        assert client.get("/jobs").json() == []


@pytest.mark.parametrize("damage", ["corrupt", "delete"])
def test_damaged_model_is_refused_and_old_one_keeps_serving(api, caplog, damage):
    """A published folder corrupted or deleted before the API loads it."""
    import shutil

    from app.registry import version_dir, write_version

    good = version_dir(api.settings, 1)
    v = write_version(
        api.settings,
        api.store,
        lambda folder: shutil.copytree(good, folder, dirs_exist_ok=True),
        labels=["negative", "neutral", "positive"],
        parent_version=1,
        job_id=None,
        metrics={},
        lineage={},
        decision="published",
    )
    folder = version_dir(api.settings, v)
    if damage == "corrupt":
        (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    else:
        shutil.rmtree(folder)
    with api.store.session() as s:
        versions.activate(s, v, f"test: a {damage}d model")
    time.sleep(1.0)  # several poll intervals
    r = api.post("/label", json={"text": "still fine?"})
    assert r.status_code == 200 and r.json()["model_version"] == 1
    damaged = [m for m in api.get("/models").json() if m["version"] == v][0]
    assert "refused" in damaged["error"]
    assert f"refused model v{v}" in caplog.text
    active = api.get("/models/active").json()
    assert (active["version"], active["served_version"]) == (v, 1)  # visible to operators


def test_health_ready_and_metrics(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model_version"] == 1
    api.post("/label", json={"text": "count me"})
    metrics = api.get("/metrics").text
    assert 'pfp_http_requests_total{method="POST",route="/label",status="200"}' in metrics
    assert "pfp_served_model_version 1.0" in metrics
    # Which form serves, and with which micro-batch bounds: in the metrics and the API.
    active = api.get("/models/active").json()
    form, bounds = active["served_form"], active["batching"]
    assert f'pfp_served_form{{form="{form}"}} 1.0' in metrics
    # Every form it could serve has a series, 0 where not served (a panel keys on them).
    for other in {Form.ONNX_INT8, Form.ONNX_FP32, Form.TORCH_BF16} - {form}:
        assert f'pfp_served_form{{form="{other}"}} 0.0' in metrics
    assert f'pfp_inference_batch_bound{{bound="texts"}} {float(bounds["max_texts"])}' in metrics
    assert active["served_form_reason"] and bounds["source"] in ("measured", "cached")
    assert active["process"]["pid"] > 0


def test_not_ready_without_a_model(settings: Settings):
    app = create_app(settings, job_queue=RecordingQueue())
    with TestClient(app, headers=ADMIN) as client:
        assert client.get("/readyz").status_code == 503
        r = client.post("/label", json={"text": "anyone?"})
        assert r.status_code == 503 and "no model is active yet" in r.json()["detail"]
        assert r.headers["retry-after"]


def test_gold_import_takes_the_gate_split(api):
    body = {"examples": [{"text": "a gate text", "label": "neutral", "split": "gate"}]}
    r = api.post("/gold", json=body)
    assert r.status_code == 200, r.text
    assert set(r.json()["split_counts"]) == {"train", "dev", "test", "gate"}
    before = r.json()["split_counts"]["gate"]
    # Without a split, a text lands in the split its digest says: some land in gate.
    texts = [f"an unsplit gold text {i}" for i in range(60)]
    examples = [{"text": t, "label": "neutral"} for t in texts]
    after = api.post("/gold", json={"examples": examples}).json()["split_counts"]["gate"]
    from app.store.gold import split_for

    assert after - before == sum(split_for(t) == "gate" for t in texts) > 0
    refused = api.post(
        "/gold", json={"examples": [{"text": "x", "label": "neutral", "split": "g"}]}
    )
    assert refused.status_code == 422
