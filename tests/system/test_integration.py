"""The whole loop with real processes: uvicorn API processes, a Celery worker, Redis and
PostgreSQL (distributed mode), and `serve` alone (embedded mode)."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN, ADMIN_KEY, synthetic_texts
from tests.processes import Proc, free_port, service_env, wait_job, wait_ready

pytestmark = pytest.mark.integration

http = httpx.Client(headers=ADMIN, timeout=30)

SMALL_JOB = {
    "pretrain_max_steps": 4,
    "finetune_max_steps": 4,
    "batch_size": 16,
    "max_length": 32,
    "promotion_margin": -1.0,
}


class Labeler(threading.Thread):
    """A client that keeps labeling, round-robin over the API processes, until stopped."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.stop_event = threading.Event()
        self.failures: list[str] = []
        self.answers: list[tuple[str, int, int]] = []  # (url, id, model version)

    def run(self) -> None:
        with httpx.Client(timeout=30, headers=ADMIN) as client:
            i = 0
            while not self.stop_event.is_set():
                url = self.urls[i % len(self.urls)]
                try:
                    r = client.post(f"{url}/label", json={"text": f"@united during swap {i}"})
                    if r.status_code == 200:
                        body = r.json()
                        self.answers.append((url, body["id"], body["model_version"]))
                    else:
                        self.failures.append(f"{r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                i += 1


@pytest.fixture
def distributed(
    tmp_path: Path, tiny_base: Path, gold_file: Path, postgres_url: str, redis_url: str
):
    env = service_env(
        data_dir=tmp_path / "data",
        model_dir=tmp_path / "models",
        database_url=postgres_url,
        redis_url=redis_url,
        base_model=tiny_base,
        bootstrap_gold=gold_file,
        bootstrap_epochs=2,
        max_length=32,
        swap_poll_seconds=5,  # long: the Redis notice must do the swap
        admin_api_keys=ADMIN_KEY,
    )
    procs: list[Proc] = []
    boot = Proc("bootstrap", ["bootstrap"], env, tmp_path)
    assert boot.popen.wait(300) == 0, boot.log()
    ports = [free_port(), free_port()]
    apis = [Proc(f"api{i}", ["api", "--port", str(p)], env, tmp_path) for i, p in enumerate(ports)]
    # Laid out as on a GPU machine and a CPU one: training jobs reach only the worker that
    # listens to the training queue, everything else only the other.
    worker = Proc("worker", ["worker", "--queues", "training"], env, tmp_path)
    light = Proc("light-worker", ["worker", "--queues", "maintenance"], env, tmp_path)
    procs += [*apis, worker, light]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    for url, proc in zip(urls, apis, strict=True):
        wait_ready(url, proc)
    yield {
        "urls": urls,
        "apis": apis,
        "worker": worker,
        "light_worker": light,
        "env": env,
        "tmp": tmp_path,
    }
    for proc in procs:
        proc.stop()


def test_label_retrain_and_hot_swap_on_two_api_processes(distributed):
    urls = distributed["urls"]
    texts = [t for t, _ in synthetic_texts(300, seed=21)]
    for start in range(0, 300, 50):
        url = urls[(start // 50) % 2]
        r = http.post(f"{url}/label/batch", json={"texts": texts[start : start + 50]}, timeout=30)
        assert r.status_code == 200 and {x["model_version"] for x in r.json()["results"]} == {1}

    labeler = Labeler(urls)
    labeler.start()
    r = http.post(f"{urls[0]}/jobs", json=SMALL_JOB, timeout=10)
    assert r.status_code == 202, r.text
    job = wait_job(urls[1], r.json()["id"], headers=ADMIN)
    assert job["status"] == "succeeded", (job, distributed["worker"].log()[-3000:])
    assert job["promoted"] is True and job["candidate_version"] == 2
    assert job["metrics"]["champion"]["dev"]["n"] > 0
    # Both API processes move to v2 (by the Redis notice; the poll interval is 5 s).
    deadline = time.monotonic() + 30
    while {u for u, _, v in labeler.answers if v == 2} != set(urls):
        assert time.monotonic() < deadline, Counter((u, v) for u, _, v in labeler.answers)
        time.sleep(0.2)
    time.sleep(0.5)
    labeler.stop_event.set()
    labeler.join(30)
    assert labeler.failures == []
    assert len(labeler.answers) > 20
    # Every answered request is in the store, under the version that answered it.
    stored = {}
    after = 0
    while True:
        page = http.get(f"{urls[0]}/labels", params={"after_id": after, "limit": 1000}).json()
        stored.update({x["id"]: x["model_version"] for x in page["items"]})
        if page["next_after_id"] is None:
            break
        after = page["next_after_id"]
    assert all(stored.get(i) == v for _, i, v in labeler.answers)
    assert len(stored) == 300 + len(labeler.answers)
    models = http.get(f"{urls[0]}/models").json()
    assert [(m["version"], m["active"]) for m in models] == [(2, True), (1, False)]
    job_line = f"job {job['id']}: pre-training pool"
    assert job_line in distributed["worker"].log()
    assert job_line not in distributed["light_worker"].log()

    # A retention run goes to the maintenance queue: the training worker never sees it.
    before = {"before": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "dry_run": False}
    run = http.post(f"{urls[0]}/admin/retention", json=before).json()
    deadline = time.monotonic() + 60
    while run["status"] == "running":
        assert time.monotonic() < deadline, (run, distributed["light_worker"].log()[-3000:])
        time.sleep(0.3)
        run = http.get(f"{urls[1]}/admin/retention/{run['id']}").json()
    assert run["status"] == "succeeded" and run["deleted"] == run["rows"] > 0
    assert f"retention run {run['id']}: deleted" in distributed["light_worker"].log()
    assert "retention run" not in distributed["worker"].log()


def test_killed_worker_leaves_the_champion_serving(distributed):
    from app.core.config import Settings
    from app.registry import live_version_dirs
    from app.store.database import Store
    from workers.schedule import fail_stale_jobs

    urls, worker = distributed["urls"], distributed["worker"]
    http.post(f"{urls[0]}/label/batch", json={"texts": [f"@jetblue thanks {i}" for i in range(64)]})
    long_job = {**SMALL_JOB, "pretrain_max_steps": 100_000}
    job_id = http.post(f"{urls[0]}/jobs", json=long_job).json()["id"]
    job = wait_job(urls[0], job_id, until=("running",), headers=ADMIN)
    deadline = time.monotonic() + 60
    while job["stage"] != "pretraining" or job["progress"] <= 0.02:
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
        job = http.get(f"{urls[0]}/jobs/{job_id}").json()
    worker.signal_group(signal.SIGKILL)
    worker.popen.wait(10)

    settings = Settings(
        **{
            k.lower(): v
            for k, v in distributed["env"].items()
            if k.lower() in Settings.model_fields
        }
    )
    assert live_version_dirs(settings) == [1]
    for url in urls:
        r = http.post(f"{url}/label", json={"text": "still serving?"})
        assert r.status_code == 200 and r.json()["model_version"] == 1
    assert http.get(f"{urls[0]}/jobs/{job_id}").json()["status"] == "running"
    # Beat's sweep ends a job whose heartbeat stopped.
    time.sleep(2.5)
    store = Store(settings.store_url)
    assert fail_stale_jobs(settings.model_copy(update={"job_stale_seconds": 2}), store) == 1
    store.dispose()
    job = http.get(f"{urls[0]}/jobs/{job_id}").json()
    assert job["status"] == "failed" and "worker lost" in job["error"]


def test_embedded_serve_runs_the_whole_loop(tmp_path: Path, tiny_base: Path, gold_file: Path):
    """What `make serve` runs: SQLite, the filesystem broker, a worker with beat, the API."""
    port = free_port()
    env = service_env(
        data_dir=tmp_path / "data",
        base_model=tiny_base,
        bootstrap_gold=gold_file,
        bootstrap_epochs=2,
        max_length=32,
        swap_poll_seconds=0.5,
    )
    serve = Proc("serve", ["serve", "--port", str(port)], env, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, serve)
        assert "Published the first model as v1" in serve.log()
        key = (tmp_path / "data" / "admin_api_key").read_text().strip()
        assert key in serve.log()  # printed once, for the user to copy
        assert httpx.post(f"{url}/label", json={"text": "no key"}).status_code == 401
        http = httpx.Client(headers={"X-API-Key": key}, timeout=30)
        r = http.post(f"{url}/label", json={"text": "@united lost my bag again"})
        assert r.status_code == 200 and r.json()["model_version"] == 1
        http.post(f"{url}/label/batch", json={"texts": [t for t, _ in synthetic_texts(80, 5)]})
        job_id = http.post(f"{url}/jobs", json=SMALL_JOB).json()["id"]
        job = wait_job(url, job_id, headers={"X-API-Key": key})
        assert job["status"] == "succeeded", (job, serve.log()[-3000:])
        deadline = time.monotonic() + 20
        while http.post(f"{url}/label", json={"text": "again"}).json()["model_version"] != 2:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert (tmp_path / "data" / "service.db").is_file()
        worker_pid = int(re.search(r"Celery worker with beat .*pid (\d+)", serve.log()).group(1))
        # A plain `kill` of serve alone (not its group) must not leave the worker behind.
        serve.popen.send_signal(signal.SIGTERM)
        assert serve.popen.wait(60) in (0, -signal.SIGTERM)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{worker_pid}").exists() and "zombie" not in _proc_state(worker_pid):
            assert time.monotonic() < deadline, "the worker outlived serve"
            time.sleep(0.2)
    finally:
        serve.stop()


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return "zombie"
