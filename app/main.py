"""The FastAPI application: `app.main:create_app` is what uvicorn runs (factory mode)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import multiprocess

from app.api.errors import InternalErrors, install_error_handlers
from app.api.limits import RequestLimits
from app.api.routes import gold, health, jobs, label, labels, models, retention, review, stats
from app.core.config import Settings, get_settings
from app.core.logs import RequestIdMiddleware, configure_logging
from app.core.security import ApiKeys
from app.dashboard.routes import install_dashboard
from app.serving.micro_batcher import MicroBatcher
from app.serving.model_server import ModelServer
from app.serving.process_metrics import enrol_api_process
from app.serving.store_writer import StoreWriter
from app.serving.swap_notices import listen_for_swaps
from app.serving.telemetry import MetricsMiddleware, metrics_registry
from app.serving.version_loader import VersionLoader
from app.store.database import Store
from app.store.pseudo_labels import texts_like_served


def _texts_like_served(store: Store) -> Callable[[], list[str]]:
    """The store read the model server's bound measurement is given (serving reads no
    store of its own)."""

    def read() -> list[str]:
        with store.session() as session:
            return texts_like_served(session)

    return read


def create_app(
    settings: Settings | None = None,
    *,
    job_queue: Any = None,
    model_server: ModelServer | None = None,
) -> FastAPI:
    """Build the app. Tests pass their own job queue or model server; production gets the
    Celery app and a ModelServer on the registry."""
    settings = settings or get_settings()
    # Here, not in lifespan: uvicorn's own start-up lines then come out in the same format.
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Store(settings.store_url)
        loader = VersionLoader(settings, _texts_like_served(store))
        server = model_server or ModelServer(settings, store, loader)
        batcher = MicroBatcher(settings, lambda: server.current)
        queue = job_queue
        if queue is None:
            from workers.celery_app import make_celery

            queue = make_celery(settings)
        app.state.settings = settings
        app.state.api_keys = ApiKeys.from_settings(settings)
        app.state.store = store
        app.state.metrics_registry = metrics_registry(store)
        process_figures = enrol_api_process(app.state.metrics_registry)
        app.state.model_server = server
        app.state.micro_batcher = batcher
        app.state.job_queue = queue
        await server.start()
        await batcher.start()
        writer = StoreWriter(store)
        writer.start()
        app.state.store_writer = writer
        listener = (
            asyncio.create_task(listen_for_swaps(settings.redis_url, server))
            if settings.redis_url
            else None
        )
        try:
            yield
        finally:
            if listener:
                listener.cancel()
                with suppress(asyncio.CancelledError):
                    await listener
            await batcher.stop()  # drains: the answers it gives are stored by the writer
            await server.stop()
            await writer.stop()
            store.dispose()
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                # Drop this process's live gauges (what it served) from the shared metrics.
                multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
            if process_figures is not None:
                process_figures.leave()

    app = FastAPI(
        title="Predictions-for-pre-training labeling service",
        version="0.1.0",
        description="Labels text, keeps every prediction, and pre-trains a better model "
        "of itself on them.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:  # closed unless the operator names the origins
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID"],
        )
    app.add_middleware(InternalErrors)  # inside the others: they see its 500 as an answer
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)  # outermost: every line of a request carries its id
    for module in (label, labels, gold, jobs, models, stats, retention, review, health):
        app.include_router(module.router)
    install_dashboard(app)
    return app
