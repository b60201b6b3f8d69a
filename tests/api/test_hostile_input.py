"""Hostile input: one bad text never fails its neighbours, every refusal has one shape,
and nothing refused is stored."""

from __future__ import annotations

import asyncio
import http.client
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.config import Settings
from app.main import create_app
from app.ml.modeling import Classifier, init_classifier
from app.serving.form_choice import ServedModel
from app.serving.micro_batcher import MicroBatcher
from app.serving.scoring import UnscorableText
from app.serving.store_writer import StoreWriter
from app.serving.telemetry import ISOLATED_FAILURES
from app.store import gold, jobs, pseudo_labels
from app.store.database import Store
from app.store.pseudo_labels import Prediction
from tests.conftest import ADMIN, LABELS, LiveServer, RecordingQueue

POISON = "\u2620poison"  # the test model's tokenizer fails on texts that hold this
JSON = {**ADMIN, "content-type": "application/json"}


@pytest.fixture
def api(published_copy: Settings):
    app = create_app(published_copy, job_queue=RecordingQueue())
    with TestClient(app, headers=ADMIN) as client:
        client.store = app.state.store  # type: ignore[attr-defined]
        client.server = app.state.model_server  # type: ignore[attr-defined]
        yield client


def _rows(store: Store) -> list[tuple[int, str]]:
    with store.session() as s:
        return [(r.id, r.text) for r in pseudo_labels.list_pseudo_labels(s, limit=100_000)]


def _gold_count(store: Store) -> int:
    with store.session() as s:
        return sum(gold.split_counts(s).values())


def _shape(response) -> dict:
    body = response.json()
    assert set(body) >= {"error", "detail"}, body
    assert isinstance(body["error"], str) and body["detail"]
    return body


def _poison(served: ServedModel | None) -> None:
    """Make the served model fail on POISON texts, as a tokenizer fails on input it cannot
    take, whatever other texts share its call."""
    assert served is not None
    classifier = served.classifier
    encode = classifier.encode

    def fragile(texts: list[str]) -> dict[str, list[list[int]]]:
        if any(POISON in t for t in texts):
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, ...]")
        return encode(texts)

    object.__setattr__(classifier, "encode", fragile)


# -- validation at the edge ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "raw", "where"),
    [
        ("/label", '{"text": "\\ud800 x"}', "character 0"),
        ("/label", '{"text": "ok \\udfff"}', "character 3"),
        ("/label/batch", '{"texts": ["fine", "also fine", "bad \\ud83d"]}', "texts"),
        ("/gold", '{"examples": [{"text": "\\ud800", "label": "neutral"}]}', "text"),
        ("/gold", '{"examples": [{"text": "fine", "label": "neg\\udc00"}]}', "label"),
    ],
)
def test_lone_surrogates_are_refused_and_nothing_is_stored(api, path, raw, where):
    gold_before = _gold_count(api.store)
    r = api.post(path, content=raw.encode(), headers=JSON)
    assert r.status_code == 422, r.text
    body = _shape(r)
    assert "lone surrogate" in json.dumps(body["detail"]) and where in json.dumps(body["detail"])
    assert _rows(api.store) == [] and _gold_count(api.store) == gold_before


def test_a_batch_names_the_bad_item(api):
    r = api.post("/label/batch", content=b'{"texts": ["a", "b", "c\\ud800"]}', headers=JSON)
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "texts"] and "texts[2]" in error["msg"]


# -- isolation in the micro-batcher and the store writer ---------------------------------------


def test_a_poisoned_request_fails_alone_in_its_batch(published_copy: Settings, tiny_base: Path):
    """Requests gathered into one batch with a text the model cannot take: the others are
    answered, the culprit alone fails, and the event is counted."""
    model, tokenizer = init_classifier(tiny_base, LABELS)
    served = ServedModel(1, Classifier(model.eval(), tokenizer, LABELS, 32))
    _poison(served)
    batcher = MicroBatcher(published_copy, lambda: served)
    before = ISOLATED_FAILURES.labels("model")._value.get()

    async def scenario() -> list:
        await batcher.start()
        try:
            requests = [[f"fine {i}"] for i in range(15)]
            requests.insert(7, ["also fine", f"{POISON} here", "fine too"])
            return await asyncio.gather(
                *(batcher.predict(texts) for texts in requests), return_exceptions=True
            )
        finally:
            await batcher.stop()

    outcomes = asyncio.run(scenario())
    failed = outcomes.pop(7)
    assert isinstance(failed, UnscorableText) and failed.positions == [1]
    assert "texts[1]" in str(failed)
    assert all(isinstance(o, list) and len(o) == 1 for o in outcomes), outcomes
    assert ISOLATED_FAILURES.labels("model")._value.get() == before + 1


def test_a_poisoned_request_among_concurrent_ones_over_http(api):
    _poison(api.server.current)
    texts = [f"@united ordinary request {i}" for i in range(24)]

    def send(text: str):
        return text, api.post("/label", json={"text": text})

    with ThreadPoolExecutor(25) as pool:
        futures = [pool.submit(send, t) for t in texts[:12]]
        futures.append(pool.submit(send, f"{POISON} from a hostile client"))
        futures += [pool.submit(send, t) for t in texts[12:]]
        answers = [f.result() for f in futures]
    by_text = dict(answers)
    hostile = by_text.pop(f"{POISON} from a hostile client")
    assert hostile.status_code == 422 and _shape(hostile)["error"] == "unscorable_text"
    assert all(r.status_code == 200 for r in by_text.values()), [
        r.text for r in by_text.values() if r.status_code != 200
    ]
    stored = dict(_rows(api.store))
    assert sorted(stored.values()) == sorted(texts)  # every ordinary one, the hostile one not
    assert {by_text[t].json()["id"] for t in texts} == set(stored)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_row_the_store_refuses_does_not_fail_the_rows_committed_with_it(
    backend, tmp_path, request
):
    url = (
        f"sqlite:///{tmp_path / 's.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    store = Store(url)
    # What validation would refuse, reaching the writer anyway: SQLite cannot encode a lone
    # surrogate, PostgreSQL cannot hold NUL.
    bad_text = "bad \ud800" if backend == "sqlite" else "bad \x00"
    before = ISOLATED_FAILURES.labels("store")._value.get()

    async def scenario() -> list:
        writer = StoreWriter(store)
        writer.start()
        try:
            batch = [[Prediction(f"good {i}", "neutral", 0.5, [0.0] * 3, 1)] for i in range(10)]
            batch.insert(4, [Prediction(bad_text, "neutral", 0.5, [0.0] * 3, 1)])
            return await asyncio.gather(*(writer.write(p) for p in batch), return_exceptions=True)
        finally:
            await writer.stop()

    outcomes = asyncio.run(scenario())
    refused = outcomes.pop(4)
    assert isinstance(refused, Exception)
    assert all(isinstance(o, list) and len(o) == 1 for o in outcomes), outcomes
    stored = _rows(store)
    store.dispose()
    assert sorted(t for _, t in stored) == sorted(f"good {i}" for i in range(10))
    assert sorted(i for i, _ in stored) == sorted(o[0] for o in outcomes)
    assert ISOLATED_FAILURES.labels("store")._value.get() == before + 1


# -- one error shape ---------------------------------------------------------------------------


def test_every_refusal_has_the_service_shape(api, monkeypatch):
    cases = [
        (api.get("/no/such/path"), 404, "not_found"),
        (api.delete("/label"), 405, "method_not_allowed"),
        (api.post("/label", content=b'{"text": "\xff\xfe"}', headers=JSON), 400, "malformed_json"),
        (
            api.post("/label", content=b"[" * 100_000 + b"]" * 100_000, headers=JSON),
            400,
            "malformed_json",
        ),
        (api.post("/label", content=b'{"text": ', headers=JSON), 400, "malformed_json"),
        (
            api.post("/label", content=b"text=x", headers={**ADMIN, "content-type": "text/plain"}),
            415,
            "unsupported_media_type",
        ),
        (api.post("/label", json={"text": "x" * 20_000}), 413, "too_large"),
        (api.post("/label", json={"nope": 1}), 422, "invalid"),
        (api.get("/jobs", headers={"X-API-Key": "wrong"}), 401, "unauthorized"),
        (api.get("/jobs/123"), 404, "not_found"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, (status, response.text)
        assert _shape(response)["error"] == code, response.text

    def broken(*_a, **_k):
        raise RuntimeError("secret internal detail: /srv/db password=hunter2")

    monkeypatch.setattr(jobs, "list_jobs", broken)
    r = api.get("/jobs", headers={**ADMIN, "X-Request-ID": "trace-500"})
    assert r.status_code == 500
    body = _shape(r)
    assert body["error"] == "internal" and body["request_id"] == "trace-500"
    assert "trace-500" in body["detail"] and "hunter2" not in r.text and "secret" not in r.text
    assert r.headers["x-request-id"] == "trace-500"


def test_a_500_keeps_the_connection_open(live_server: LiveServer, monkeypatch):
    monkeypatch.setattr(
        jobs, "list_jobs", lambda *_a, **_k: (_ for _ in ()).throw(RuntimeError("boom"))
    )
    url = urlparse(live_server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("GET", "/jobs", headers=ADMIN)
    first = conn.getresponse()
    assert first.status == 500 and json.loads(first.read())["error"] == "internal"
    conn.request("GET", "/healthz")  # the same keep-alive connection
    second = conn.getresponse()
    assert second.status == 200
    second.read()
    conn.close()


# -- times with a zone -------------------------------------------------------------------------


def test_every_time_the_api_gives_has_its_zone(api):
    api.post("/label", json={"text": "hello"})
    with api.store.session() as s:
        jobs.create_job(s, {}, 0, "api")
    stamps = [
        api.get("/models/active").json()["model"]["created_at"],
        api.get("/models").json()[0]["created_at"],
        api.get("/jobs").json()[0]["created_at"],
        api.get("/labels").json()["items"][0]["created_at"],
        api.get("/stats/labels").json()["since"],
    ]
    assert all(s.endswith("Z") for s in stamps), stamps


# -- property tests over the contract ----------------------------------------------------------

# Any code point, surrogates included (Hypothesis leaves them out unless asked).
ANY_CHAR = st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr))
TEXT = st.text(ANY_CHAR, max_size=40)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
PROPERTY = settings(
    max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)


def _acceptable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return bool(text.strip()) and "\x00" not in text


@pytest.fixture(scope="module")
def shared_api(published_template: Path, tmp_path_factory, tiny_base: Path, gold_file: Path):
    """One app for all examples of a property (a fresh store per example is too slow)."""
    import shutil

    from tests.conftest import make_settings

    data = tmp_path_factory.mktemp("hostile") / "data"
    shutil.copytree(published_template, data)
    app = create_app(make_settings(data, tiny_base, gold_file), job_queue=RecordingQueue())
    with TestClient(app, headers=ADMIN) as client:
        client.store = app.state.store  # type: ignore[attr-defined]
        yield client


def _check(response, before: list, after: list) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        _shape(response)
        assert after == before, "a refused request stored something"


@PROPERTY
@given(texts=st.lists(TEXT, min_size=1, max_size=5))
def test_any_text_is_stored_exactly_or_refused_whole(shared_api, texts):
    before = _rows(shared_api.store)
    raw = json.dumps({"texts": texts}).encode()  # escapes: surrogates travel as \udXXX
    r = shared_api.post("/label/batch", content=raw, headers=JSON)
    after = _rows(shared_api.store)
    _check(r, before, after)
    if r.status_code == 200:
        assert all(_acceptable(t) for t in texts)
        new = after[len(before) :]
        assert [t for _, t in new] == texts  # stored exactly, in order
        assert [x["id"] for x in r.json()["results"]] == [i for i, _ in new]
    else:
        assert not all(_acceptable(t) for t in texts), r.text


@PROPERTY
@given(body=JSON_VALUE, path=st.sampled_from(["/label", "/label/batch", "/gold", "/jobs"]))
def test_any_json_body_gets_an_answer_in_the_contract(shared_api, body, path):
    before = _rows(shared_api.store)
    r = shared_api.post(path, content=json.dumps(body).encode(), headers=JSON)
    _check(r, before, _rows(shared_api.store))


@PROPERTY
@given(text=TEXT)
def test_any_single_text(shared_api, text):
    before = _rows(shared_api.store)
    r = shared_api.post("/label", content=json.dumps({"text": text}).encode(), headers=JSON)
    after = _rows(shared_api.store)
    _check(r, before, after)
    assert (r.status_code == 200) == _acceptable(text), r.text
    if r.status_code == 200:
        assert after[-1] == (r.json()["id"], text)
