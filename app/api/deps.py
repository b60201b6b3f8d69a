"""Dependencies the routes take; tests replace them with app.dependency_overrides."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from app.core.config import Settings
from app.serving.model_server import ModelServer
from app.store.database import Store


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_model_server(request: Request) -> ModelServer:
    return request.app.state.model_server


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_job_queue(request: Request) -> Any:
    """Something with `send_task(name, args=...)`: the Celery app in production."""
    return request.app.state.job_queue


StoreDep = Annotated[Store, Depends(get_store)]
ServerDep = Annotated[ModelServer, Depends(get_model_server)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
QueueDep = Annotated[Any, Depends(get_job_queue)]
