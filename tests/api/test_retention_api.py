"""POST /admin/retention and its runs: a dry run by default, a run queued for a worker with
dry_run false, and clear refusals that change nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from app.store import pseudo_labels, retention
from tests.conftest import ADMIN, LABEL_KEY, RecordingQueue
from workers.retention import run_retention


@pytest.fixture
def api(api):
    """The API with 12 pseudo-labels stored."""
    r = api.post("/label/batch", json={"texts": [f"old text {i}" for i in range(12)]})
    assert r.status_code == 200, r.text
    return api


def stored(api) -> int:
    with api.store.session() as s:
        return len(pseudo_labels.list_pseudo_labels(s, limit=1000))


def test_a_dry_run_says_what_would_go_and_changes_nothing(api):
    now = datetime.now(UTC)
    r = api.post("/admin/retention", json={"before": now.isoformat()})
    assert r.status_code == 200, r.text
    plan = r.json()
    assert plan["dry_run"] is True and plan["rows"] == 12 and plan["upto_id"] == 12
    assert plan["retention_mark"] == 0 and plan["running_run"] is None
    assert plan["oldest"].endswith("Z") and plan["oldest"] <= plan["newest"]
    # A time without a zone means UTC.
    naive = api.post("/admin/retention", json={"before": "2000-01-01T00:00:00"}).json()
    assert naive["rows"] == 0 and naive["before"] == "2000-01-01T00:00:00Z"
    assert api.queue.sent == [] and stored(api) == 12
    assert api.get("/admin/retention").json() == []


def test_a_run_is_queued_for_a_worker_and_followed(api):
    before = (datetime.now(UTC) + timedelta(milliseconds=1)).isoformat()
    r = api.post("/admin/retention", json={"before": before, "dry_run": False})
    assert r.status_code == 202, r.text
    run = r.json()
    assert run["status"] == "running" and run["rows"] == 12 and run["deleted"] == 0
    assert api.queue.sent == [("pfp.retention", [run["id"]])]
    # A second run while the first is running is refused, and says why.
    again = api.post("/admin/retention", json={"before": before, "dry_run": False})
    assert again.status_code == 409 and f"run {run['id']} is still running" in again.text
    plan = api.post("/admin/retention", json={"before": before}).json()
    assert plan["retention_mark"] == 12 and plan["running_run"] == run["id"]
    # Its task lost with a broker that keeps nothing: queue the same run again.
    resumed = api.post(
        "/admin/retention", json={"before": before, "dry_run": False, "resume": True}
    )
    assert resumed.status_code == 202 and resumed.json()["id"] == run["id"]
    assert api.queue.sent == [("pfp.retention", [run["id"]])] * 2

    run_retention(run["id"], api.settings, api.store)  # what the worker does
    done = api.get(f"/admin/retention/{run['id']}").json()
    assert done["status"] == "succeeded" and done["deleted"] == 12
    assert done["archive_path"].endswith(".parquet") and done["finished_at"].endswith("Z")
    assert stored(api) == 0
    assert [r["id"] for r in api.get("/admin/retention").json()] == [run["id"]]
    # /label goes on, with ids after the removed range.
    assert api.post("/label", json={"text": "new"}).json()["id"] == 13


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"before": "2999-01-01T00:00:00Z", "dry_run": False}, 422, "in the future"),
        ({"before": "not a date"}, 422, "before"),
        ({"before": "2020-01-01T00:00:00Z", "dry_run": False, "extra": 1}, 422, "extra"),
        ({}, 422, "before"),
        ({"before": "2000-01-01T00:00:00Z", "dry_run": False}, 409, "nothing to remove"),
    ],
)
def test_bad_requests_are_refused_and_change_nothing(api, body, status, fragment):
    r = api.post("/admin/retention", json=body)
    assert r.status_code == status and fragment in r.text, r.text
    assert api.queue.sent == [] and stored(api) == 12
    with api.store.session() as s:
        assert retention.deleted_upto(s) == 0


def test_queue_down_gives_503_and_leaves_no_run(published_copy: Settings):
    app = create_app(published_copy, job_queue=RecordingQueue(fail=True))
    with TestClient(app, headers=ADMIN) as client:
        client.post("/label", json={"text": "something"})
        r = client.post(
            "/admin/retention",
            json={"before": datetime.now(UTC).isoformat(), "dry_run": False},
        )
        assert r.status_code == 503 and "job queue is unavailable" in r.json()["detail"]
        assert client.get("/admin/retention").json() == []
        with app.state.store.session() as s:
            assert retention.deleted_upto(s) == 0  # jobs may use the rows again


def test_retention_needs_the_admin_key(api):
    body = {"before": datetime.now(UTC).isoformat()}
    assert api.post("/admin/retention", json=body, headers={"X-API-Key": ""}).status_code == 401
    label_only = {"X-API-Key": LABEL_KEY}
    assert api.post("/admin/retention", json=body, headers=label_only).status_code == 403
    assert api.get("/admin/retention", headers=label_only).status_code == 403
    assert api.get("/admin/retention/99").status_code == 404
