"""The model server inside each API process: it holds the version this process serves and
swaps it for the store's active one.

A swap loads and warms the new version beside the old one (app/serving/version_loader.py,
off the event loop), then replaces one reference: a batch pins the model it started with
(app/serving/micro_batcher.py), so requests in flight finish on it. A version that fails
to load is refused, once per activation, and the old one keeps serving. The store's
active version is read when a swap notice arrives (app/serving/swap_notices.py) and every
SWAP_POLL_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import torch

from app.core.config import Settings
from app.ml.modeling import Classifier
from app.serving.batch_bounds import fixed_bounds
from app.serving.form_choice import ServedModel
from app.serving.telemetry import show_served
from app.store import versions
from app.store.database import Store

log = logging.getLogger(__name__)

# Loads a version: the registry's (app/serving/version_loader.py) chooses the form and
# the bounds; tests load their own classifiers, served at the bounds as set.
Loader = Callable[[int], Classifier | ServedModel]


class ModelServer:
    """`current`: what this process serves (None before the first model is published)."""

    def __init__(self, settings: Settings, store: Store, loader: Loader) -> None:
        self.settings = settings
        self.store = store
        self.current: ServedModel | None = None
        # activation id -> why this process refused to load its version. Keyed by the
        # activation, not the version: activating a version again gives it a fresh try.
        self.refused: dict[int, str] = {}
        self._loader = loader
        self._swap_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self.processes, self.threads = settings.api_layout

    async def start(self) -> None:
        torch.set_num_threads(self.threads)
        await self.sync()
        self._watcher = asyncio.create_task(self._watch_loop(), name="swap-watcher")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)

    def wake(self) -> None:
        """Check the store for a new active model now (a swap notice arrived)."""
        self._wake.set()

    async def sync(self) -> None:
        """Load the store's active version if it is not the one served."""
        async with self._swap_lock:
            active = await asyncio.to_thread(self._read_active)
            if active is None:
                return
            activation, wanted = active
            if (self.current and self.current.version == wanted) or activation in self.refused:
                return
            try:
                loaded = await asyncio.get_running_loop().run_in_executor(None, self._load, wanted)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                self.refused[activation] = reason
                kept = f"v{self.current.version}" if self.current else "no model"
                log.error("refused model v%s (%s); still serving %s", wanted, reason, kept)
                await asyncio.to_thread(self._record_refusal, wanted, reason)
                return
            previous = self.current
            self.current = loaded
            show_served(wanted, loaded.form, loaded.bounds.max_texts, loaded.bounds.max_tokens)
            log.info(
                "now serving v%s (was %s)", wanted, f"v{previous.version}" if previous else "none"
            )

    def _load(self, version: int) -> ServedModel:
        with self.store.session() as session:
            row = versions.get_version(session, version)
            if row is None or row.state != "ready":
                raise RuntimeError(f"v{version} is not a ready version in the registry")
        loaded = self._loader(version)
        if isinstance(loaded, ServedModel):
            return loaded
        return ServedModel(version, loaded, bounds=fixed_bounds(self.settings))

    def _read_active(self) -> tuple[int, int] | None:
        with self.store.session() as session:
            return versions.active_activation(session)

    def _record_refusal(self, version: int, reason: str) -> None:
        try:
            with self.store.session() as session:
                row = versions.get_version(session, version)
                if row is not None:
                    row.error = f"refused by an API process: {reason}"
        except Exception:
            log.exception("could not record the refusal of v%s", version)

    async def _watch_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.swap_poll_seconds)
            self._wake.clear()
            try:
                await self.sync()
            except Exception as exc:  # a store outage must not kill the watcher
                log.warning("model sync failed: %s", exc)
