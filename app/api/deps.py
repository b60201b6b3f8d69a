"""Dependencies the routes take; tests replace them with app.dependency_overrides.

All are `async def` although none awaits I/O: FastAPI runs a plain `def` dependency in its
thread pool, and four thread hand-offs per /label request cost more than the work itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from app.api.errors import Forbidden, Unauthorized
from app.core.config import Settings
from app.core.security import ApiKeys
from app.serving.micro_batcher import MicroBatcher
from app.serving.model_server import ModelServer
from app.serving.store_writer import StoreWriter
from app.store.database import Store


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or None


_HOW = "send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"


async def require_admin(request: Request) -> None:
    """Admin endpoints: jobs, gold import, activation, stored texts and their export."""
    keys: ApiKeys = request.app.state.api_keys
    key = _presented_key(request)
    if key is None:
        raise Unauthorized(f"missing API key: {_HOW}")
    if keys.is_admin(key):
        return
    if keys.may_label(key):
        raise Forbidden("this API key may label texts but not use admin endpoints")
    raise Unauthorized("invalid API key")


async def require_labeler(request: Request) -> None:
    """Labeling: any key, or none where the operator opened it (LABEL_OPEN)."""
    keys: ApiKeys = request.app.state.api_keys
    if keys.label_open:
        return
    await require_reader(request)


async def require_reader(request: Request) -> None:
    """Reading the model list: any valid key."""
    keys: ApiKeys = request.app.state.api_keys
    key = _presented_key(request)
    if key is None:
        raise Unauthorized(f"missing API key: {_HOW}")
    if not keys.may_label(key):
        raise Unauthorized("invalid API key")


# `app.state` is untyped: each getter names what the lifespan put there.
async def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def get_model_server(request: Request) -> ModelServer:
    server: ModelServer = request.app.state.model_server
    return server


async def get_micro_batcher(request: Request) -> MicroBatcher:
    batcher: MicroBatcher = request.app.state.micro_batcher
    return batcher


async def get_store_writer(request: Request) -> StoreWriter:
    writer: StoreWriter = request.app.state.store_writer
    return writer


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_job_queue(request: Request) -> Any:
    """Something with `send_task(name, args=...)`: the Celery app in production."""
    return request.app.state.job_queue


@dataclass(frozen=True)
class Labeling:
    """What a labeling route needs, checked and gathered in one dependency: FastAPI's cost
    is per dependency, and solving four took a visible share of the event loop's time per
    /label request (docs/benchmarks.md, "Why serving is built this way")."""

    batcher: MicroBatcher
    writer: StoreWriter
    settings: Settings


async def labeling(request: Request) -> Labeling:
    """The caller may label (else 401), and the micro-batcher, store writer and settings."""
    await require_labeler(request)
    return Labeling(
        await get_micro_batcher(request),
        await get_store_writer(request),
        await get_app_settings(request),
    )


StoreDep = Annotated[Store, Depends(get_store)]
ServerDep = Annotated[ModelServer, Depends(get_model_server)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
LabelingDep = Annotated[Labeling, Depends(labeling)]
QueueDep = Annotated[Any, Depends(get_job_queue)]

ADMIN = [Depends(require_admin)]
READER = [Depends(require_reader)]
