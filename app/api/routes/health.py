"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from app.api.deps import ServerDep, StoreDep
from app.serving import telemetry

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(server: ServerDep, store: StoreDep) -> JSONResponse:
    """Ready when a model is loaded and the store answers; 503 otherwise."""
    store_ok = await run_in_threadpool(store.ping)
    model = server.current.version if server.current else None
    ready = store_ok and model is not None
    body = {"ready": ready, "store": store_ok, "model_version": model}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
def metrics(request: Request, server: ServerDep) -> Response:
    """Prometheus text format: this process's metrics and the store's (docs/operations.md)."""
    telemetry.SERVED_VERSION.set(server.current.version if server.current else 0)
    registry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
