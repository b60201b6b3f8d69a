"""Faults and load, with real processes: the store or Redis going away, a worker process
killed mid-job, overload past the model queue, and a restart under load."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from tests.conftest import ADMIN, ADMIN_KEY, synthetic_texts
from tests.faults import TcpProxy, child_pids
from tests.processes import Proc, free_port, service_env, wait_job, wait_ready
from tests.system.test_integration import SMALL_JOB, Labeler

pytestmark = pytest.mark.integration

http = httpx.Client(headers=ADMIN, timeout=30)


@pytest.fixture
def stack(tmp_path: Path, tiny_base: Path, gold_file: Path):
    """Starts service processes over one data folder; stops them all afterwards."""
    procs: list[Proc] = []
    common = {
        "data_dir": tmp_path / "data",
        "base_model": tiny_base,
        "bootstrap_gold": gold_file,
        "bootstrap_epochs": 2,
        "max_length": 32,
        "swap_poll_seconds": 1,
        "admin_api_keys": ADMIN_KEY,
    }

    def env(**overrides: object) -> dict[str, str]:
        return service_env(**{**common, **overrides})

    def start(name: str, args: list[str], **overrides: object) -> Proc:
        proc = Proc(name, args, env(**overrides), tmp_path)
        procs.append(proc)
        return proc

    def bootstrap(**overrides: object) -> None:
        proc = start("bootstrap", ["bootstrap"], **overrides)
        assert proc.popen.wait(300) == 0, proc.log()

    def api(port: int | None = None, **overrides: object) -> tuple[str, Proc]:
        port = port or free_port()
        proc = start(f"api-{port}", ["api", "--port", str(port)], **overrides)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc)
        return url, proc

    yield SimpleNamespace(start=start, bootstrap=bootstrap, api=api, tmp=tmp_path)
    for proc in procs:
        proc.stop()


def _stored(url: str) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    after = 0
    while True:
        page = http.get(f"{url}/labels", params={"after_id": after, "limit": 1000}).json()
        rows.update({x["id"]: x for x in page["items"]})
        if page["next_after_id"] is None:
            return rows
        after = page["next_after_id"]


def _eventually(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.25)


def test_database_outage_turns_readyz_false_and_recovers(stack, postgres_url: str):
    proxy = TcpProxy(5432)
    via_proxy = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    try:
        stack.bootstrap(database_url=postgres_url)
        url, _api = stack.api(database_url=via_proxy)
        assert http.post(f"{url}/label", json={"text": "before"}).status_code == 200

        proxy.cut()
        ready = _eventually(
            lambda: (r := httpx.get(f"{url}/readyz")).status_code == 503 and r, 15, "readyz 503"
        )
        assert ready.json()["store"] is False
        r = http.post(f"{url}/label", json={"text": "during the outage"})
        assert r.status_code == 503 and "store is unavailable" in r.json()["detail"]
        assert r.headers["retry-after"]

        proxy.restore()
        _eventually(lambda: httpx.get(f"{url}/readyz").status_code == 200, 30, "readyz back")
        assert http.post(f"{url}/label", json={"text": "after"}).status_code == 200
        texts = [row["text"] for row in _stored(url).values()]
        assert texts == ["before", "after"]  # the refused one was never stored
    finally:
        proxy.close()


def test_redis_outage_keeps_labeling_and_refuses_jobs_until_it_returns(
    stack, postgres_url: str, redis_url: str
):

    proxy = TcpProxy(6379)
    via_proxy = redis_url.replace("127.0.0.1:6379", f"127.0.0.1:{proxy.port}")
    try:
        env = {"database_url": postgres_url, "redis_url": via_proxy}
        stack.bootstrap(**env)
        url, _api = stack.api(**env)
        stack.start("worker", ["worker"], **env)
        texts = [t for t, _ in synthetic_texts(40, 7)]
        assert http.post(f"{url}/label/batch", json={"texts": texts}).status_code == 200

        proxy.cut()
        for i in range(5):
            assert http.post(f"{url}/label", json={"text": f"no redis {i}"}).status_code == 200
        r = http.post(f"{url}/jobs", json=SMALL_JOB)
        assert r.status_code == 503 and "job queue is unavailable" in r.json()["detail"]
        assert http.get(f"{url}/jobs").json() == []  # no job left queued for nobody
        assert len(_stored(url)) == 45

        proxy.restore()
        accepted = _eventually(
            lambda: (r := http.post(f"{url}/jobs", json=SMALL_JOB)).status_code == 202 and r,
            30,
            "job submission back",
        )
        job = wait_job(url, accepted.json()["id"], timeout=180, headers=ADMIN)
        assert job["status"] == "succeeded", job
    finally:
        proxy.close()


def test_killed_pool_process_job_is_retried_from_the_start(
    stack, postgres_url: str, redis_url: str
):

    env = {"database_url": postgres_url, "redis_url": redis_url}
    stack.bootstrap(**env)
    url, _api = stack.api(**env)
    worker = stack.start("worker", ["worker"], **env)
    http.post(f"{url}/label/batch", json={"texts": [t for t, _ in synthetic_texts(64, 8)]})
    job_id = http.post(f"{url}/jobs", json={**SMALL_JOB, "pretrain_max_steps": 300}).json()["id"]

    def pretraining():
        job = http.get(f"{url}/jobs/{job_id}").json()
        return job["stage"] == "pretraining" and job["progress"] > 0.05 and job

    first = _eventually(pretraining, 120, "job in pre-training")
    pool = child_pids(worker.pid)
    assert pool, "the worker has no pool process"
    for pid in pool:
        os.kill(pid, signal.SIGKILL)
    job = wait_job(url, job_id, timeout=300, headers=ADMIN)
    assert job["status"] == "succeeded", (job, worker.log()[-3000:])
    assert job["started_at"] > first["started_at"]  # run again from the start
    assert "SIGKILL" in worker.log() or "signal 9" in worker.log()
    models = http.get(f"{url}/models").json()
    assert [m["version"] for m in models] == [2, 1]  # one candidate, not two


def test_overload_answers_429_and_every_200_is_stored(stack):
    stack.bootstrap()
    url, _api = stack.api(infer_queue_limit=8)

    async def load() -> list[tuple[int, dict]]:
        results: list[tuple[int, dict]] = []
        deadline = time.monotonic() + 12
        sent = 0

        async def client_loop(client: httpx.AsyncClient, n: int) -> None:
            nonlocal sent
            while time.monotonic() < deadline and sent < 3000:
                sent += 1
                r = await client.post(f"{url}/label", json={"text": f"@united load {n} {sent}"})
                results.append((r.status_code, r.json()))

        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(headers=ADMIN, timeout=30, limits=limits) as client:
            await asyncio.gather(*(client_loop(client, n) for n in range(64)))
        return results

    results = asyncio.run(load())
    statuses = {status for status, _ in results}
    assert statuses <= {200, 429}, statuses
    answered = [body for status, body in results if status == 200]
    refused = [body for status, body in results if status == 429]
    assert answered and refused, (len(answered), len(refused))
    assert all("retry shortly" in body["detail"] for body in refused)
    stored = _stored(url)
    assert len(stored) == len(answered)
    for body in answered:
        row = stored[body["id"]]
        assert (row["label"], row["model_version"]) == (body["label"], body["model_version"])


def test_restart_under_load_loses_no_answered_row(stack):
    stack.bootstrap()
    port = free_port()
    url, api = stack.api(port)
    labeler = Labeler([url])
    labeler.start()
    _eventually(lambda: len(labeler.answers) > 50, 60, "some answers")
    api.popen.send_signal(signal.SIGTERM)  # what an orchestrator does on a rolling restart
    assert api.popen.wait(60) in (0, -signal.SIGTERM)
    before_restart = len(labeler.answers)
    url, _api = stack.api(port)
    _eventually(lambda: len(labeler.answers) > before_restart + 20, 60, "answers after restart")
    labeler.stop_event.set()
    labeler.join(30)
    stored = _stored(url)
    for _, row_id, version in labeler.answers:
        assert stored[row_id]["model_version"] == version
    # Only connection errors while the process was down; never a 5xx from a live process.
    assert all("500" not in failure[:3] for failure in labeler.failures)
