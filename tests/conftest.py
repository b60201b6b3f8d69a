"""Shared fixtures: a tiny randomly initialised BERT, small gold data, stores on SQLite
and PostgreSQL, and a published first model."""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx
import pytest
import uvicorn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from app.core.config import Settings  # noqa: E402
from app.store.database import Store  # noqa: E402
from bench.tiny import build_tiny_bert, build_tiny_mpnet  # noqa: E402

POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_TEST_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")

ADMIN_KEY = "test-admin-key"
LABEL_KEY = "test-label-key"
ADMIN = {"X-API-Key": ADMIN_KEY}

LABELS = ["negative", "neutral", "positive"]
_WORDS = {
    "negative": ["delayed", "lost", "rude", "cancelled", "worst", "broken", "late", "awful"],
    "neutral": ["schedule", "question", "gate", "tomorrow", "booking", "seat", "number", "info"],
    "positive": ["thanks", "great", "love", "awesome", "friendly", "best", "smooth", "amazing"],
}
_AIRLINES = ["@united", "@jetblue", "@southwestair", "@americanair", "@usairways"]


def synthetic_texts(n: int, seed: int) -> list[tuple[str, str]]:
    """Tweets whose label follows from their words: learnable by a tiny model in seconds."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % 3]
        words = rng.sample(_WORDS[label], 3)
        rows.append((f"{rng.choice(_AIRLINES)} {' '.join(words)} #{seed}x{i}", label))
    return rows


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stronger teacher's encoder for tests: another architecture (MPNet) and shape than
    the student's."""
    return build_tiny_mpnet(tmp_path_factory.mktemp("tiny-mpnet"))


def write_gold_file(path: Path, n: int = 300, seed: int = 1) -> Path:
    with path.open("w") as handle:
        for text, label in synthetic_texts(n, seed):
            handle.write(json.dumps({"text": text, "label": label}) + "\n")
    return path


@pytest.fixture(scope="session")
def gold_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gold_file(tmp_path_factory.mktemp("gold") / "gold.jsonl")


def make_settings(
    data_dir: Path, tiny_base: Path, gold_file: Path, **overrides: object
) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "base_model": str(tiny_base),
        "bootstrap_gold": str(gold_file),
        "bootstrap_epochs": 3.0,
        "max_length": 32,
        "swap_poll_seconds": 0.2,
        "infer_max_wait_ms": 1.0,
        # The micro-batch bounds are measured on every first load: briefly for tiny models.
        "infer_tune_seconds": 0.3,
        # Whether bf16 is a candidate depends on the CPU (AMX or avx512_bf16); tests of
        # other things serve the same form on every CPU (tests/serving/test_form_choice.py
        # covers bf16, with the CPU's answer set).
        "infer_bf16": "never",
        "database_url": "",
        "redis_url": "",
        "admin_api_keys": ADMIN_KEY,
        "label_api_keys": LABEL_KEY,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path, tiny_base: Path, gold_file: Path) -> Settings:
    return make_settings(tmp_path / "data", tiny_base, gold_file)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    s = Store(settings.store_url)
    yield s
    s.dispose()


def service_unreachable(message: str) -> NoReturn:
    """A test needs PostgreSQL or Redis and it does not answer. `make test` (and CI) fail:
    a green run must have exercised both stores. `make test-fast` sets
    PFP_TEST_SERVICES=optional so that a laptop without them skips those tests instead."""
    if os.environ.get("PFP_TEST_SERVICES") == "optional":
        pytest.skip(message)
    pytest.fail(message)


@pytest.fixture
def redis_url() -> str:
    """The test Redis, emptied first."""
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        client.flushdb()
    except redis.RedisError as exc:
        service_unreachable(f"Redis is not reachable at {REDIS_TEST_URL}: {exc}")
    finally:
        client.close()
    return REDIS_TEST_URL


def _postgres_database() -> Iterator[str]:
    import psycopg

    name = f"pfp_test_{uuid.uuid4().hex[:10]}"
    admin = POSTGRES_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        service_unreachable(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from _postgres_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The same tests on both stores the service supports."""
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'store.db'}")
        yield s
        s.dispose()
    else:
        for url in _postgres_database():
            s = Store(url)
            yield s
            s.dispose()


@pytest.fixture(scope="session")
def published_template(
    tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, gold_file: Path
) -> Path:
    """A data folder with v1 published, made once and copied by `published_copy`."""
    from workers.bootstrap import bootstrap_first_model

    data = tmp_path_factory.mktemp("template") / "data"
    s = make_settings(data, tiny_base, gold_file)
    st = Store(s.store_url)
    bootstrap_first_model(s, st)
    st.dispose()
    return data


@pytest.fixture
def published_copy(
    published_template: Path, tmp_path: Path, tiny_base: Path, gold_file: Path
) -> Settings:
    """Settings over a fresh copy of the template data folder (SQLite, v1 active)."""
    data = tmp_path / "data"
    shutil.copytree(published_template, data)
    return make_settings(data, tiny_base, gold_file)


class RecordingQueue:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, list]] = []
        self.fail = fail

    def send_task(self, name, args, **_kw):
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append((name, args))


@dataclass
class LiveServer:
    url: str
    settings: Settings
    store: Store  # a second connection to the same store, as a worker process would hold


@pytest.fixture
def live_server(published_copy: Settings) -> Iterator[LiveServer]:
    """uvicorn serving the app (tiny model v1 published) in a thread, on a free port."""
    from app.main import create_app
    from tests.processes import free_port

    port = free_port()
    app = create_app(published_copy, job_queue=RecordingQueue())
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        raise AssertionError("the API did not become ready in 60 s")
    store = Store(published_copy.store_url)
    try:
        yield LiveServer(url, published_copy, store)
    finally:
        store.dispose()
        server.should_exit = True
        thread.join(30)


# --- the compose test: its own command, never part of `make test` ---------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--compose",
        action="store_true",
        help="run only the tests marked compose (a real Docker engine: make test-compose)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`--compose` runs the compose tests alone; without it they are left out (deselected,
    not skipped): they build images and start a whole deployment, about ten minutes."""
    wanted = bool(config.getoption("--compose"))
    keep = [item for item in items if (item.get_closest_marker("compose") is not None) == wanted]
    dropped = [item for item in items if item not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
