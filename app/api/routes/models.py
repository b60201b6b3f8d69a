"""Model versions: list them, see the active one, roll back."""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from starlette.concurrency import run_in_threadpool

from app.api.deps import ADMIN, READER, ServerDep, SettingsDep, StoreDep
from app.api.errors import Conflict, NotFound
from app.api.schemas import MAX_VERSION, ActiveModelView, BatchingView, ModelView
from app.registry import NotServable, UnknownVersion, activate
from app.store import versions
from app.store.database import Store
from app.store.tables import ModelVersion

router = APIRouter(tags=["models"])


def _view(row: ModelVersion, active: int | None) -> ModelView:
    view = ModelView.model_validate(row)
    view.active = row.version == active
    lineage = row.lineage or {}
    view.layers = lineage.get("layers")
    view.promotion = lineage.get("comparison")
    view.role = "teacher" if row.decision == versions.TEACHER else "served"
    view.taught_by = lineage.get("taught_by")
    return view


@router.get("/models", response_model=list[ModelView], dependencies=READER)
def list_models(
    store: StoreDep,
    role: Annotated[
        Literal["served", "teacher"] | None,
        Query(description="Only the versions of this role (default: every one)."),
    ] = None,
) -> list[ModelView]:
    """Every version, newest first, with metrics, lineage, its role and whether it is active."""
    with store.session() as session:
        active = versions.active_version(session)
        views = [_view(row, active) for row in versions.list_versions(session)]
    return [v for v in views if role is None or v.role == role]


@router.get("/models/active", response_model=ActiveModelView, dependencies=READER)
def active_model(store: StoreDep, server: ServerDep) -> ActiveModelView:
    """The version active in the store and the one this API process serves."""
    with store.session() as session:
        active = versions.active_version(session)
        row = versions.get_version(session, active) if active is not None else None
        model = _view(row, active) if row else None
    current = server.current
    return ActiveModelView(
        version=active,
        served_version=current.version if current else None,
        served_form=current.form if current else None,
        served_form_reason=current.form_reason if current else None,
        forms_compared=current.compared if current else {},
        batching=BatchingView.model_validate(asdict(current.bounds)) if current else None,
        process={
            "pid": os.getpid(),
            "api_processes": server.processes,
            "threads": server.threads,
        },
        model=model,
    )


@router.post("/models/{version}/activate", response_model=ModelView, dependencies=ADMIN)
async def activate_version(
    store: StoreDep,
    server: ServerDep,
    settings: SettingsDep,
    version: int = Path(ge=1, le=MAX_VERSION, description="The version to serve."),
) -> ModelView:
    """Serve `version` (a rollback, or a rejected candidate chosen by hand)."""
    try:
        # The store and its activation lock are blocking: off the event loop.
        await run_in_threadpool(activate, settings, store, version, "activated through the API")
    except UnknownVersion as exc:
        raise NotFound(str(exc)) from exc
    except NotServable as exc:
        raise Conflict(str(exc)) from exc
    await server.sync()  # this process serves it before it answers
    return await run_in_threadpool(_model_view, store, version)


def _model_view(store: Store, version: int) -> ModelView:
    with store.session() as session:
        row = versions.get_version(session, version)
        assert row is not None
        return _view(row, versions.active_version(session))
