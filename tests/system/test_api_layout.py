"""Several API processes behind one port (API_PROCESSES): each loads, tunes and swaps its
model on its own, every answer is stored, and /metrics from any of them reports them all."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from app.core.config import Settings
from app.registry import publish, version_dir
from app.store.database import Store
from tests.conftest import ADMIN, ADMIN_KEY, synthetic_texts
from tests.processes import Proc, free_port, service_env, wait_ready

pytestmark = pytest.mark.integration


def _served_by_pid(url: str) -> dict[str, int]:
    """pid -> the version that API process serves, from the shared metrics."""
    text = httpx.get(f"{url}/metrics", headers=ADMIN, timeout=10).text
    return {
        pid: int(float(value))
        for pid, value in re.findall(r'pfp_served_model_version\{pid="(\d+)"\} (\S+)', text)
    }


def _pids_answering(url: str, tries: int = 60) -> set[int]:
    """The pids behind the port, from /models/active over fresh connections."""
    pids: set[int] = set()
    for _ in range(tries):
        with httpx.Client(headers=ADMIN, timeout=10) as client:
            pids.add(client.get(f"{url}/models/active").json()["process"]["pid"])
        if len(pids) >= 2:
            break
    return pids


def _pids_of_a_burst(url: str, connections: int) -> list[int]:
    """The pid behind each of `connections` keep-alive connections opened at once, as a
    client's connection pool opens them, before any request is sent."""
    host, port = url.removeprefix("http://").split(":")
    pool = [http.client.HTTPConnection(host, int(port), timeout=30) for _ in range(connections)]
    try:
        for conn in pool:
            conn.connect()
        pids = []
        for conn in pool:
            conn.request("GET", "/models/active", headers=ADMIN)
            pids.append(json.loads(conn.getresponse().read())["process"]["pid"])
        return pids
    finally:
        for conn in pool:
            conn.close()


def test_two_api_processes_on_one_port_serve_store_and_swap_each(
    tmp_path: Path, tiny_base: Path, gold_file: Path
) -> None:
    values = {
        "data_dir": tmp_path / "data",
        "base_model": tiny_base,
        "bootstrap_gold": gold_file,
        "bootstrap_epochs": 2,
        "max_length": 32,
        "swap_poll_seconds": 0.5,
        "admin_api_keys": ADMIN_KEY,
        "api_processes": 2,
        "torch_threads": 1,
    }
    env = service_env(**values)
    boot = Proc("bootstrap", ["bootstrap"], env, tmp_path)
    assert boot.popen.wait(300) == 0, boot.log()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = Proc("api", ["api", "--port", str(port)], env, tmp_path)
    try:
        wait_ready(url, api)
        assert "API: 2 processes x 1 inference thread" in api.log()
        # Both processes answer on the one port, each with its own model loaded.
        deadline = time.monotonic() + 60
        while len(_served_by_pid(url)) < 2:
            assert time.monotonic() < deadline, api.log()[-3000:]
            time.sleep(0.3)
        pids = _pids_answering(url)
        assert len(pids) == 2 and {str(p) for p in pids} == set(_served_by_pid(url))
        # CPU and memory of each process, whichever of them answers the scrape.
        metrics = httpx.get(f"{url}/metrics", headers=ADMIN).text
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes"):
            found = re.findall(rf'^{name}\{{pid="(\d+)"\}} \S+$', metrics, re.MULTILINE)
            assert sorted(found) == sorted(str(p) for p in pids), (name, found)
        # A burst of connections spreads over both (one shared socket gave one process 30
        # of a load client's 32): binomial(24, 1/2) has 4 or more each but 1 time in 3,600.
        burst = _pids_of_a_burst(url, 24)
        assert min(burst.count(pid) for pid in pids) >= 4, burst
        active = httpx.get(f"{url}/models/active", headers=ADMIN).json()
        assert active["process"] == {**active["process"], "api_processes": 2, "threads": 1}
        assert active["served_form"].startswith("onnxruntime")
        assert active["batching"]["source"] in ("measured", "cached")

        # Labels from many connections, all answered and all stored.
        texts = [t for t, _ in synthetic_texts(40, seed=5)]
        ids = []
        for text in texts:
            with httpx.Client(headers=ADMIN, timeout=30) as client:
                r = client.post(f"{url}/label", json={"text": text})
            assert r.status_code == 200, r.text
            ids.append(r.json()["id"])
        page = httpx.get(f"{url}/labels", headers=ADMIN, params={"limit": 1000}).json()
        assert {x["id"] for x in page["items"]} >= set(ids)
        metrics = httpx.get(f"{url}/metrics", headers=ADMIN).text
        counted = re.search(
            r'pfp_http_requests_total\{method="POST",route="/label",status="200"\} (\S+)', metrics
        )
        assert counted and float(counted.group(1)) == len(texts)  # summed over the processes

        # A new version: each process swaps on its own (polling the store).
        settings = Settings(**{k: str(v) for k, v in values.items()})  # type: ignore[arg-type]
        store = Store(settings.store_url)
        try:
            source = version_dir(settings, 1)
            published = publish(
                settings,
                store,
                lambda folder: shutil.copytree(source, folder, dirs_exist_ok=True),
                labels=["negative", "neutral", "positive"],
                champion=1,
                wins=True,
                reason="test: a second version",
                job_id=None,
                metrics={},
                lineage={"kind": "test-copy"},
            )
        finally:
            store.dispose()
        assert published.promoted
        deadline = time.monotonic() + 60
        while set(_served_by_pid(url).values()) != {published.version}:
            assert time.monotonic() < deadline, (_served_by_pid(url), api.log()[-3000:])
            time.sleep(0.3)
        assert len(_served_by_pid(url)) == 2
    finally:
        assert api.stop() is not None
    # Stopping the port's supervisor stops every API process (none left behind).
    log = api.log()
    assert log.count("Finished server process") == 2, log[-3000:]
