"""The serving beacon: serving tells training on the same machine that it is busy, and
training pauses.

Both sides use this module: API processes (`ServingBeacon`) and workers (`TrainingYield`).
Why not niceness or SCHED_IDLE: measured (`make bench`, part 5; the figures are in
docs/benchmarks.md, "Why serving is built this way"), a training job slowed the API's
forward passes several-fold whether the worker ran at nice 0, nice 19 or under
SCHED_IDLE, with 1 thread or all: the scheduler did starve other CPU-bound programs (a
matrix-product loop at SCHED_IDLE cost serving nothing), but a training step and a
forward pass also compete for memory bandwidth and cache, which no CPU priority shares
out. So training yields by not running: between two steps it waits while an API process
on this machine has served within the last second, up to a bound that keeps it moving
(WORKER_MIN_SHARE).

The signal is a file per API process under MODEL_DIR/.serving (the folder API processes
and workers already share), named by the kernel's boot id and the process id and touched
at most twice a second while that process serves. The boot id is the running kernel's:
every container on one host sees the same one, another host a different one, so a worker
yields only to API processes that share its CPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

BUSY_SECONDS = 1.0  # an API process that served within this long counts as busy
_TOUCH_EVERY = 0.5


@lru_cache
def machine_id() -> str:
    """The running kernel's boot id (one per host, shared by its containers)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return socket.gethostname()


def beacon_folder(models_path: Path) -> Path:
    return models_path / ".serving"


class ServingBeacon:
    """API side: `mark_busy()` after each forward pass (cheap: a file touch twice a second
    at most)."""

    def __init__(self, models_path: Path) -> None:
        self.path = beacon_folder(models_path) / f"{machine_id()}-{os.getpid()}"
        self._last = 0.0
        self._failed = False

    def mark_busy(self) -> None:
        now = time.monotonic()
        if now - self._last < _TOUCH_EVERY:
            return
        self._last = now
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
        except OSError as exc:
            if not self._failed:  # serving goes on; only training's courtesy is lost
                log.warning("cannot signal serving load at %s: %s", self.path, exc)
                self._failed = True

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


def serving_busy(models_path: Path, now: float | None = None) -> bool:
    """Has an API process on this machine served within BUSY_SECONDS?"""
    now = time.time() if now is None else now
    prefix = machine_id() + "-"
    try:
        with os.scandir(beacon_folder(models_path)) as entries:
            for entry in entries:
                if entry.name.startswith(prefix):
                    try:
                        if now - entry.stat().st_mtime < BUSY_SECONDS:
                            return True
                    except FileNotFoundError:
                        continue  # that API process just stopped
    except FileNotFoundError:
        return False
    return False


class TrainingYield:
    """Worker side: call after each training step. While serving on this machine is busy
    it waits, but never more than (1 / min_share - 1) times the step it follows, so a job
    under constant load still keeps `min_share` of the wall time and finishes."""

    def __init__(self, models_path: Path, min_share: float, poll: float = 0.05) -> None:
        self.models_path = models_path
        self.factor = 0.0 if min_share >= 1 else (1 / max(min_share, 0.01)) - 1
        self.poll = poll
        self.paused_seconds = 0.0
        self._since = time.monotonic()

    def __call__(self) -> None:
        start = time.monotonic()
        budget = (start - self._since) * self.factor
        deadline = start + budget
        while time.monotonic() < deadline and serving_busy(self.models_path):
            time.sleep(self.poll)
        paused = time.monotonic() - start
        self.paused_seconds += paused
        if paused >= self.poll:
            log.debug("training paused %.2f s for serving (allowed %.2f s)", paused, budget)
        self._since = time.monotonic()
