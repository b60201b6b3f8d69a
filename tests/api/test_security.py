"""API keys, CORS and paths: nobody in who shouldn't be."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.core.security import ApiKeys, ensure_admin_key, key_file
from app.main import create_app
from tests.conftest import ADMIN_KEY, LABEL_KEY, RecordingQueue

ADMIN_CALLS = [
    ("get", "/labels"),
    ("get", "/labels/export"),
    ("post", "/gold"),
    ("post", "/jobs"),
    ("get", "/jobs"),
    ("get", "/jobs/some-id"),
    ("post", "/jobs/some-id/cancel"),
    ("post", "/models/1/activate"),
]
LABEL_CALLS = [("post", "/label"), ("post", "/label/batch")]
READ_CALLS = [("get", "/models"), ("get", "/models/active")]
OPEN_CALLS = [
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
]


def _client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings, job_queue=RecordingQueue()))


def _call(client: TestClient, method: str, path: str, key: str | None, scheme: str = "x-api-key"):
    headers = {}
    if key is not None:
        headers = {"Authorization": f"Bearer {key}"} if scheme == "bearer" else {"X-API-Key": key}
    body = {"/label": {"text": "hi"}, "/label/batch": {"texts": ["hi"]}}.get(path)
    return getattr(client, method)(path, headers=headers, **({"json": body} if body else {}))


@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS + LABEL_CALLS + READ_CALLS)
def test_missing_or_wrong_key_is_401(published_copy: Settings, method, path):
    with _client(published_copy) as client:
        for key in (None, "wrong", ADMIN_KEY + "x", ""):
            r = _call(client, method, path, key)
            assert r.status_code == 401, (key, r.text)
            assert "API key" in r.json()["detail"]
            assert r.headers["www-authenticate"] == "Bearer"
        assert client.get("/labels", headers={"X-API-Key": ADMIN_KEY}).json()["items"] == []


@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS)
def test_label_key_cannot_administer(published_copy: Settings, method, path):
    with _client(published_copy) as client:
        r = _call(client, method, path, LABEL_KEY)
        assert r.status_code == 403 and "may label" in r.json()["detail"]


@pytest.mark.parametrize("scheme", ["x-api-key", "bearer"])
def test_keys_open_what_they_should(published_copy: Settings, scheme):
    with _client(published_copy) as client:
        for method, path in LABEL_CALLS + READ_CALLS:
            assert _call(client, method, path, LABEL_KEY, scheme).status_code == 200, path
        assert _call(client, "get", "/jobs", ADMIN_KEY, scheme).status_code == 200
        for method, path in OPEN_CALLS:
            assert _call(client, method, path, None).status_code == 200, path


def test_label_open_lets_labeling_through_but_not_admin(published_copy: Settings):
    settings = published_copy.model_copy(update={"label_open": True})
    with _client(settings) as client:
        assert _call(client, "post", "/label", None).status_code == 200
        assert _call(client, "post", "/label/batch", None).status_code == 200
        assert _call(client, "get", "/labels", None).status_code == 401
        assert _call(client, "get", "/models", None).status_code == 401


def test_generated_key_is_made_once_private_and_used(published_copy: Settings, caplog):
    settings = published_copy.model_copy(update={"admin_api_keys": ""})
    created = ensure_admin_key(settings)
    assert created and len(created) >= 40
    assert ensure_admin_key(settings) is None  # never printed twice
    path = key_file(settings)
    assert path.stat().st_mode & 0o777 == 0o600
    assert ApiKeys.from_settings(settings).is_admin(created)
    caplog.set_level(logging.DEBUG)
    with _client(settings) as client:
        assert (
            client.get("/jobs", headers={"Authorization": f"Bearer {created}"}).status_code == 200
        )
        assert client.get("/jobs", headers={"X-API-Key": "guess"}).status_code == 401
    assert created not in caplog.text


def test_configured_keys_never_generate_a_file(published_copy: Settings):
    assert ensure_admin_key(published_copy) is None
    assert not key_file(published_copy).exists()


def test_cors_closed_unless_configured(published_copy: Settings):
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    with _client(published_copy) as client:
        r = client.options("/label", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
    settings = published_copy.model_copy(update={"cors_origins": "https://ops.example"})
    with _client(settings) as client:
        ok = client.options("/label", headers={**preflight, "Origin": "https://ops.example"})
        assert ok.headers["access-control-allow-origin"] == "https://ops.example"
        bad = client.options("/label", headers=preflight)
        assert "access-control-allow-origin" not in bad.headers


@pytest.mark.parametrize(
    "path",
    [
        "/models/..%2F..%2Fetc/activate",
        "/models/v1/activate",
        "/models/1%2F..%2F2/activate",
        "/models/-1/activate",
        "/models/1e3/activate",
    ],
)
def test_version_paths_are_numbers_only(published_copy: Settings, path):
    with _client(published_copy) as client:
        r = client.post(path, headers={"X-API-Key": ADMIN_KEY})
        assert r.status_code in (404, 422), r.text
        active = client.get("/models/active", headers={"X-API-Key": ADMIN_KEY}).json()
        assert active["version"] == 1
