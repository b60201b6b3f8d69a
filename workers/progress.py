"""Reporting a job's progress to the store, and noticing a cancel request there."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from app.store import jobs
from app.store.database import Store
from app.store.tables import utcnow


class JobCancelled(Exception):
    """An operator asked to cancel the job."""


class JobReporter:
    """Maps stage-local progress onto the job's 0..1 bar and writes it at most once a
    second; each write is also the job's heartbeat and its check for cancellation."""

    def __init__(
        self,
        store: Store,
        job_id: str,
        stages: Sequence[tuple[str, float]],
        between_steps: Callable[[], None] | None = None,
    ) -> None:
        # Called after every step: where training pauses for busy serving (TrainingYield).
        self.between_steps = between_steps
        self.store = store
        self.job_id = job_id
        self.offsets: dict[str, tuple[float, float]] = {}
        self.plan(stages)
        self.stage = stages[0][0]
        self._last_write = 0.0

    def plan(self, stages: Sequence[tuple[str, float]]) -> None:
        """Share the bar among `stages` (name, weight): a job that learns what it has to do
        only once it has started (a teacher to fine-tune, say) plans again then; the bar
        restarts from where the stage it is in begins."""
        total = sum(weight for _, weight in stages)
        start = 0.0
        for name, weight in stages:
            self.offsets[name] = (start, weight / total)
            start += weight / total

    def enter(self, stage: str) -> None:
        self.stage = stage
        self.update(0.0, force=True)

    def __call__(self, fraction: float, _loss: float = 0.0) -> None:
        self.update(fraction)
        if self.between_steps is not None:
            self.between_steps()

    def update(self, fraction: float, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_write < 1.0:
            return
        self._last_write = now
        start, width = self.offsets[self.stage]
        with self.store.session() as session:
            job = jobs.get_job(session, self.job_id)
            if job is None:
                raise JobCancelled("the job row is gone")
            if job.cancel_requested:
                raise JobCancelled("cancelled by request")
            job.stage = self.stage
            job.progress = round(min(1.0, start + width * min(1.0, fraction)), 4)
            job.heartbeat_at = utcnow()
