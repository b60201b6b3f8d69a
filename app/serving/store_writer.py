"""Batched store writes for /label.

Concurrent requests hand their predictions to one writer, which inserts everything that
is waiting in a single transaction, off the event loop. A request is answered only after
its rows are committed (a 200 means stored), but one commit serves many requests instead
of one commit each.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.core.logs import request_id
from app.serving.batch_callers import failed_alone, named_thread, settle
from app.serving.telemetry import WRITER_PENDING
from app.store.database import Store
from app.store.pseudo_labels import Prediction, insert_predictions

log = logging.getLogger(__name__)


# The store itself is away: every write would fail alike, so none is tried alone.
_OUTAGES = (OperationalError, InterfaceError, PoolTimeout, ConnectionError)


@dataclass
class _Write:
    predictions: list[Prediction]
    future: asyncio.Future[list[int]]
    request_id: str = field(default_factory=request_id.get)


class StoreWriter:
    def __init__(self, store: Store, max_rows_per_commit: int = 2048) -> None:
        self.store = store
        self.max_rows = max_rows_per_commit
        self._queue: asyncio.Queue[_Write] = asyncio.Queue()
        # One writer thread: SQLite takes one writer at a time anyway, and one transaction
        # at a time keeps ids in arrival order.
        self._thread = named_thread("store-writer", "pfp-store")
        self._task: asyncio.Task[None] | None = None
        self._pending = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="store-writer")

    async def stop(self, drain_seconds: float = 10.0) -> None:
        """Finish the writes already handed over, then stop."""
        deadline = asyncio.get_running_loop().time() + drain_seconds
        while self._pending and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._thread.shutdown(wait=True)

    async def write(self, predictions: list[Prediction]) -> list[int]:
        """Store `predictions`; returns their ids once committed."""
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._pending += 1
        WRITER_PENDING.inc()
        try:
            self._queue.put_nowait(_Write(predictions, future))
            return await future
        finally:
            self._pending -= 1
            WRITER_PENDING.dec()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            rows = len(batch[0].predictions)
            while rows < self.max_rows and not self._queue.empty():
                item = self._queue.get_nowait()
                batch.append(item)
                rows += len(item.predictions)
            outcome: list[int] | BaseException
            try:
                outcome = await loop.run_in_executor(self._thread, self._commit, batch)
            except _OUTAGES as exc:
                outcome = exc
            except Exception as exc:
                if len(batch) > 1:
                    await self._commit_each(batch)
                    continue
                outcome = exc
            settle([b.future for b in batch], [len(b.predictions) for b in batch], outcome)

    async def _commit_each(self, batch: list[_Write]) -> None:
        """A row the database refuses must not fail the rows committed with it: each
        request's rows again, in a transaction of their own."""
        loop = asyncio.get_running_loop()
        for item in batch:
            outcome: list[int] | BaseException
            try:
                outcome = await loop.run_in_executor(self._thread, self._commit, [item])
            except Exception as exc:
                outcome = exc
                if not isinstance(exc, _OUTAGES):
                    # The store refused what validation let through: an error, not input.
                    failed_alone("store", item.request_id, exc, logging.ERROR)
            settle([item.future], [len(item.predictions)], outcome)

    def _commit(self, batch: list[_Write]) -> list[int]:
        with self.store.transaction() as conn:
            return insert_predictions(conn, [p for item in batch for p in item.predictions])
