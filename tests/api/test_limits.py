"""Limits and odd input: the right status, a clear message, nothing half written."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from app.store import pseudo_labels
from app.store.database import Store
from tests.conftest import ADMIN, RecordingQueue

ODD_TEXTS = [
    "emoji 😀👍🏽✈️ and ZWJ 👩‍👩‍👧",
    "control \x01\x02\x1b[31m\x7f and \u200b zero width",
    "right-to-left ‏עברית‎ العربية",
    "a" * 3000,  # one very long word
    "line\nbreaks\r\nand\ttabs",
    "surrogate-free but astral 𝕳𝖊𝖑𝖑𝖔",
    "  padded  ",
]


def _client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings, job_queue=RecordingQueue()), headers=ADMIN)


def _count(settings: Settings) -> int:
    store = Store(settings.store_url)
    with store.session() as s:
        n = len(pseudo_labels.list_pseudo_labels(s, limit=100_000))
    store.dispose()
    return n


def test_body_over_the_limit_is_413_before_reading(published_copy: Settings):
    settings = published_copy.model_copy(update={"max_body_bytes": 1000})
    with _client(settings) as client:
        r = client.post("/label/batch", json={"texts": ["x" * 200] * 10})
        assert r.status_code == 413 and "limit is 1000" in r.json()["detail"]

        def chunks():
            yield b'{"texts": ['
            for _ in range(20):
                yield b'"' + b"y" * 100 + b'",'
            yield b'"z"]}'

        r = client.post(
            "/label/batch", content=chunks(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413 and "1000 bytes" in r.json()["detail"]
    assert _count(settings) == 0


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b'{"text": "hi"}'),
        ("application/x-www-form-urlencoded", b"text=hi"),
        (None, b'{"text":"hi"}'),
    ],
)
def test_wrong_content_type_is_415(published_copy: Settings, content_type, body):
    with _client(published_copy) as client:
        headers = {"content-type": content_type} if content_type else {}
        r = client.post("/label", content=body, headers=headers)
        assert r.status_code == 415 and "application/json" in r.json()["detail"]
    assert _count(published_copy) == 0


def test_json_with_charset_is_fine(published_copy: Settings):
    with _client(published_copy) as client:
        r = client.post(
            "/label",
            content=json.dumps({"text": "hi"}).encode(),
            headers={"content-type": "application/json; charset=utf-8"},
        )
        assert r.status_code == 200


def test_full_model_queue_answers_429_with_retry_after(published_copy: Settings):
    settings = published_copy.model_copy(update={"infer_queue_limit": 3})
    with _client(settings) as client:
        assert client.post("/label/batch", json={"texts": ["a", "b", "c"]}).status_code == 200
        r = client.post("/label/batch", json={"texts": ["a", "b", "c", "d"]})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert "limit 3" in r.json()["detail"]
    assert _count(settings) == 3


def _odd_texts_round_trip(settings: Settings) -> None:
    with _client(settings) as client:
        answers = [client.post("/label", json={"text": t}) for t in ODD_TEXTS]
        assert [a.status_code for a in answers] == [200] * len(ODD_TEXTS)
        batch = client.post("/label/batch", json={"texts": ODD_TEXTS}).json()["results"]
        stored = {
            row["id"]: row["text"]
            for row in client.get("/labels", params={"limit": 1000}).json()["items"]
        }
    assert [stored[a.json()["id"]] for a in answers] == ODD_TEXTS
    assert [stored[b["id"]] for b in batch] == ODD_TEXTS


def test_odd_text_is_stored_exactly_on_sqlite(published_copy: Settings):
    _odd_texts_round_trip(published_copy)


def test_odd_text_is_stored_exactly_on_postgresql(published_copy: Settings, postgres_url: str):
    from workers.bootstrap import bootstrap_first_model

    settings = published_copy.model_copy(
        update={"database_url": postgres_url, "model_dir": published_copy.data_dir / "pg-models"}
    )
    store = Store(settings.store_url)
    assert bootstrap_first_model(settings, store) == 1
    store.dispose()
    _odd_texts_round_trip(settings)
