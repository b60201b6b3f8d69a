"""The service under test, started as a user would (`python -m app.cli ...`) on loopback:
its processes over one data folder, readiness, shutdown, and a version published as a
winning job publishes it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from app.core.config import Settings
from app.registry import publish, version_dir
from app.store import versions
from app.store.database import Store

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-admin-key"
HEADERS = {"X-API-Key": KEY}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Service:
    """Processes started with `python -m app.cli ...` over one data folder."""

    def __init__(self, env: dict[str, str], out: Path) -> None:
        self.env = env
        self.out = out
        self.procs: list[subprocess.Popen[bytes]] = []
        self.api_pids: dict[str, int] = {}  # url -> the pid of `pfp api` serving it

    def start(
        self, name: str, *args: str, prefix: Sequence[str] = (), **env: str
    ) -> subprocess.Popen[bytes]:
        """Start `python -m app.cli ARGS`, behind `prefix` (a command such as `nice -n 19`)."""
        handle = (self.out / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "app.cli", *args],
            cwd=ROOT,
            env={**self.env, **env},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def api(self, **env: str) -> str:
        port = free_port()
        proc = self.start(f"api-{port}", "api", "--port", str(port), **env)
        url = f"http://127.0.0.1:{port}"
        # Ready when every API process serves, not the first: a sibling still loading (and
        # measuring its bounds) takes no connections, and a load started then measures
        # one process for its first seconds (docs/benchmarks.md: "The bench waits for
        # every API process").
        serving: set[int] = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"api exited; see {self.out}/api-{port}.log")
            try:
                # A new connection each time: the kernel picks a process that listens.
                active = httpx.get(f"{url}/models/active", headers=HEADERS, timeout=2).json()
                if active.get("served_version") is not None:
                    serving.add(active["process"]["pid"])
                if len(serving) >= active["process"]["api_processes"]:
                    self.api_pids[url] = proc.pid
                    return url
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"api not ready: {len(serving)} process(es) serving")

    def stop_one(self, proc: subprocess.Popen[bytes]) -> None:
        """Warm shutdown through the main process (Celery stops its own pool); SIGKILL to
        the whole group if that takes too long."""
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def publish_copy(settings: Settings, store: Store) -> int:
    """Publish a copy of the active model as a new version (what a winning job does)."""
    with store.session() as session:
        active = versions.active_version(session)
        assert active is not None
        labels = list(versions.get_version(session, active).labels)  # type: ignore[union-attr]
    source = version_dir(settings, active)

    def copy(folder: Path) -> None:
        shutil.copytree(source, folder, dirs_exist_ok=True)

    published = publish(
        settings,
        store,
        copy,
        labels=labels,
        champion=active,
        wins=True,
        reason="bench: swap under load",
        job_id=None,
        metrics={},
        lineage={"kind": "bench-copy"},
    )
    assert published.promoted, published.conflict
    return published.version
