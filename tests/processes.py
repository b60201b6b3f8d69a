"""Starting the service's real processes (API, worker, bootstrap) for integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(**values: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL"))}
    env.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"})
    # Tiny models: a short measurement of the micro-batch bounds is enough.
    env["INFER_TUNE_SECONDS"] = "0.5"
    # The same served form on every CPU (bf16 is a candidate only on some; conftest.py).
    env["INFER_BF16"] = "never"
    env.update({k.upper(): str(v) for k, v in values.items()})
    return env


class Proc:
    """A child process in its own process group, with its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("w")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 30) -> int | None:
        if self.popen.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.popen.wait(10)
        self._log.close()
        return self.popen.returncode


def wait_ready(base_url: str, proc: Proc, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise AssertionError(
                f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log()[-4000:]}"
            )
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{proc.name} not ready after {timeout}s:\n{proc.log()[-4000:]}")


def wait_job(
    base_url: str,
    job_id: str,
    timeout: float = 300,
    until=("succeeded", "failed", "cancelled"),
    headers: dict[str, str] | None = None,
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{base_url}/jobs/{job_id}", timeout=5, headers=headers).json()
        if job["status"] in until:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not in {until} after {timeout}s: {job}")
