"""Version folders: `MODEL_DIR/v{N}`, each a complete Hugging Face model folder.

A folder appears under its live name only by an atomic rename of a complete folder (the
weights, the ONNX export, the metadata and the model card), so no process ever sees a
half-written model, and nothing writes into it afterwards: API processes only read it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.core.config import Settings
from app.registry.card import model_card
from app.store import versions
from app.store.database import Store

log = logging.getLogger(__name__)

METADATA_FILE = "pfp_version.json"
MODEL_CARD_FILE = "README.md"
_VERSION_DIR = re.compile(r"^v(\d+)$")

# Writes a model (its weights, config and tokenizer) into the given empty folder.
SaveFn = Callable[[Path], None]


def version_dir(settings: Settings, version: int) -> Path:
    return settings.models_path / f"v{int(version)}"


def write_version(
    settings: Settings,
    store: Store,
    save: SaveFn,
    *,
    labels: list[str],
    parent_version: int | None,
    job_id: str | None,
    metrics: dict[str, Any],
    lineage: dict[str, Any],
    decision: str,
) -> int:
    """Save a model through `save(folder)` and put it in place as a new version (called by
    `publish`; tests call it to lay out versions that never compete).

    Order: write into a temporary folder, reserve the version number, add the metadata
    and the model card (which need the number), rename into `v{N}`, then mark the row
    ready. A crash at any point leaves either a `.tmp-*` folder (swept later) or a row
    that never became ready, never a partial `v{N}` nor one without its card.
    """
    settings.models_path.mkdir(parents=True, exist_ok=True)
    sweep_temporary(settings)  # what writers that died before their rename left behind
    tmp = settings.models_path / f".tmp-{uuid.uuid4().hex}"
    try:
        tmp.mkdir()
        save(tmp)
        forms: dict[str, Any] | None = None
        if settings.infer_backend == "onnxruntime" and not (tmp / "model.onnx").is_file():
            from app.ml.serving_forms import build_forms

            # Here, once, before the folder appears: API processes only load it.
            forms = build_forms(tmp, settings.max_length, _dev_set(store))
        with store.session() as session:
            version = versions.create_version(
                session,
                labels=labels,
                parent_version=parent_version,
                job_id=job_id,
                metrics=metrics,
                lineage=lineage,
                decision=decision,
            ).version
        meta = {"version": version, "labels": labels, "metrics": metrics, "lineage": lineage}
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2))
        card = model_card(
            settings,
            version=version,
            labels=labels,
            parent_version=parent_version,
            job_id=job_id,
            metrics=metrics,
            lineage=lineage,
            decision=decision,
            forms=forms,
        )
        (tmp / MODEL_CARD_FILE).write_text(card)
        _fsync_tree(tmp)
        os.rename(tmp, version_dir(settings, version))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with store.session() as session:
        row = versions.get_version(session, version)
        assert row is not None
        row.state = "ready"
    return version


def _dev_set(store: Store) -> tuple[list[str], list[str]] | None:
    """The gold dev set the serving forms are scored on (None where there is none)."""
    from app.store.gold import load_split

    with store.session() as session:
        texts, labels = load_split(session, "dev")
    return (texts, labels) if texts else None


def _fsync_tree(folder: Path) -> None:
    # The rename must not become durable before the files it names.
    for path in folder.iterdir():
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def sweep_temporary(settings: Settings, older_than_seconds: float = 3600.0) -> int:
    """Remove `.tmp-*` folders left by writers that died; returns how many."""
    removed = 0
    if not settings.models_path.is_dir():
        return 0
    cutoff = time.time() - older_than_seconds
    for path in settings.models_path.glob(".tmp-*"):
        if path.is_dir() and path.stat().st_mtime < cutoff:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def live_version_dirs(settings: Settings) -> list[int]:
    if not settings.models_path.is_dir():
        return []
    found = (_VERSION_DIR.match(p.name) for p in settings.models_path.iterdir())
    return sorted(int(m.group(1)) for m in found if m)
