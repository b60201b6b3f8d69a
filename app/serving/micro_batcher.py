"""The micro-batcher of an API process: concurrent requests gathered into batches that the
served model scores on one inference thread, off the event loop.

Two parts, as in text-embeddings-inference (`queue.rs` forms batches, `infer.rs` holds the
permits): `BatchQueue` only forms batches; `MicroBatcher` admits requests against a limit
of texts waiting (back-pressure: refused at once, never queued without bound), runs each
batch on the model serving when the batch starts (a batch pins it: requests in flight
finish on the model they started with), and fails only the request whose text the model
cannot take, answering the rest of its batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app.core.config import Settings
from app.core.logs import request_id
from app.core.serving_beacon import ServingBeacon
from app.serving.batch_bounds import DEFAULT_MAX_TEXTS
from app.serving.batch_callers import failed_alone, named_thread, settle
from app.serving.form_choice import ServedModel
from app.serving.scoring import Scored, UnscorableText, blame, score
from app.serving.telemetry import QUEUE_TEXTS

log = logging.getLogger(__name__)


class NoActiveModel(RuntimeError):
    """No model has been published yet (the first fine-tuning has not finished)."""


class ModelOverloaded(RuntimeError):
    """More texts wait for the model than INFER_QUEUE_LIMIT allows."""


class ShuttingDown(RuntimeError):
    """The process is stopping and takes no new work."""


@dataclass
class Pending:
    """One request's texts, waiting for their batch."""

    texts: list[str]
    future: asyncio.Future[list[Scored]]
    enqueued: float = field(default_factory=time.perf_counter)
    request_id: str = field(default_factory=request_id.get)


class BatchQueue:
    """Forms batches of pending requests, up to `max_texts()` texts (the bound of the model
    serving now: it changes with a swap), and nothing else."""

    def __init__(self, max_wait: float, max_texts: Callable[[], int]) -> None:
        self.max_wait = max_wait
        self.max_texts = max_texts
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()
        # Requests in the last batch: about as many callers are about to send again.
        self._last_gathered = 1

    def put(self, pending: Pending) -> None:
        self._queue.put_nowait(pending)

    async def next_batch(self) -> list[Pending]:
        """The next batch: what queued while the last one ran, then, waiting at most
        `max_wait`, only until as many requests as the last batch answered have come.
        Those callers are about to send again, and a pass started before they do runs a
        smaller, slower-per-text batch (measured against a fixed wait: docs/benchmarks.md,
        "Why serving is built this way"); a lone client (1 request) never waits. Where fewer
        come back (clients left), one batch waits out `max_wait` and the next expects
        fewer. Callers that gave up meanwhile are left out (the batch may be empty)."""
        loop = asyncio.get_running_loop()
        pending = [await self._queue.get()]
        limit = self.max_texts()
        count = len(pending[0].texts)
        deadline = loop.time() + (self.max_wait if self._last_gathered > 1 else 0.0)
        while count < limit:
            if not self._queue.empty():
                item = self._queue.get_nowait()
            elif len(pending) >= self._last_gathered:
                break
            else:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            pending.append(item)
            count += len(item.texts)
        self._last_gathered = len(pending)
        return [p for p in pending if not p.future.done()]


class MicroBatcher:
    """`await predict(texts)`: the texts scored by the model `current()` serves."""

    def __init__(self, settings: Settings, current: Callable[[], ServedModel | None]) -> None:
        self.current = current
        self.queue_limit = settings.infer_queue_limit
        self._queue = BatchQueue(settings.infer_max_wait_ms / 1000, self._max_texts)
        # One inference thread: torch already spreads one forward pass over the cores.
        self._infer = named_thread("infer", "pfp-infer")
        # Texts accepted but not yet answered: the permits behind back-pressure.
        self._waiting_texts = 0
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        # Tells a training job on this machine to pause while this process serves.
        self._beacon = ServingBeacon(settings.models_path)

    def _max_texts(self) -> int:
        served = self.current()
        return served.bounds.max_texts if served else DEFAULT_MAX_TEXTS

    async def start(self) -> None:
        self._task = asyncio.create_task(self._batch_loop(), name="batcher")

    async def stop(self, drain_seconds: float = 10.0) -> None:
        """Refuse new work, let accepted texts finish (their answers are stored by the
        routes that await them), then stop."""
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_seconds
        while self._waiting_texts and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._infer.shutdown(wait=False, cancel_futures=True)
        self._beacon.remove()

    async def predict(self, texts: list[str]) -> list[Scored]:
        if self._closing:
            raise ShuttingDown("this API process is shutting down; retry on another")
        if self.current() is None:
            raise NoActiveModel("no model is active yet: the first model is still being trained")
        limit = self.queue_limit
        if self._waiting_texts + len(texts) > limit:
            raise ModelOverloaded(
                f"{self._waiting_texts} texts are waiting for the model (limit {limit}); "
                "retry shortly"
            )
        future: asyncio.Future[list[Scored]] = asyncio.get_running_loop().create_future()
        self._waiting_texts += len(texts)
        QUEUE_TEXTS.inc(len(texts))
        try:
            self._queue.put(Pending(texts, future))
            return await future
        finally:
            self._waiting_texts -= len(texts)
            QUEUE_TEXTS.dec(len(texts))

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pending = await self._queue.next_batch()
            if not pending:
                continue
            served = self.current()
            assert served is not None  # predict admits nothing before a model serves
            texts = [t for p in pending for t in p.texts]
            outcome: list[Scored] | BaseException
            try:
                outcome = await loop.run_in_executor(self._infer, self._score, served, texts)
            except Exception as exc:
                # One request's text must not fail the others gathered with it: score
                # each request alone and fail only the ones that fail by themselves.
                outcomes = await loop.run_in_executor(
                    self._infer, self._score_each, served, pending, exc
                )
                for p, each in zip(pending, outcomes, strict=True):
                    settle([p.future], [len(p.texts)], each)
                continue
            settle([p.future for p in pending], [len(p.texts) for p in pending], outcome)

    def _score(self, served: ServedModel, texts: list[str]) -> list[Scored]:
        scored = score(served, texts)
        self._beacon.mark_busy()
        return scored

    def _score_each(
        self, served: ServedModel, pending: list[Pending], batch_error: Exception
    ) -> list[list[Scored] | BaseException]:
        outcomes: list[list[Scored] | BaseException] = []
        for p in pending:
            # A batch of one request has just failed as a whole: it is not scored again.
            error: Exception | None = batch_error if len(pending) == 1 else None
            if error is None:
                try:
                    outcomes.append(self._score(served, p.texts))
                    continue
                except Exception as exc:
                    error = exc
            blamed = blame(served, p.texts, error)
            if isinstance(blamed, UnscorableText):
                failed_alone("model", p.request_id, blamed)
            else:
                log.error("the model failed on request %s: %s", p.request_id, error)
            outcomes.append(blamed)
        return outcomes
