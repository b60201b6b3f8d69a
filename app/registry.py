"""The model registry: versioned HF folders under MODEL_DIR plus their rows in the store.

A version's folder appears under its live name (`v{N}`) only by an atomic rename of a
complete folder, so no process ever sees a half-written model. Activation is a row in an
append-only log, moved only by compare-and-set against the champion a job evaluated.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text as sql_text
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.store import registry as versions
from app.store.database import Store

log = logging.getLogger(__name__)

SWAP_CHANNEL = "pfp:model-activated"
METADATA_FILE = "pfp_version.json"
MODEL_CARD_FILE = "README.md"
_VERSION_DIR = re.compile(r"^v(\d+)$")


class PublishConflict(RuntimeError):
    """The active model changed after the candidate was evaluated against it."""


def version_dir(settings: Settings, version: int) -> Path:
    return settings.models_path / f"v{int(version)}"


def _lock_activations(session: Session) -> None:
    """Serialise publishers so that two jobs cannot both win against the same champion."""
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        session.execute(sql_text("SELECT pg_advisory_xact_lock(80417)"))
    else:
        # A write as the first statement takes SQLite's write lock before the read below.
        session.execute(sql_text("UPDATE model_versions SET state = state WHERE 0 = 1"))


def write_version(
    settings: Settings,
    store: Store,
    save: Any,
    *,
    labels: list[str],
    parent_version: int | None,
    job_id: str | None,
    metrics: dict[str, Any],
    lineage: dict[str, Any],
    decision: str,
) -> int:
    """Save a model through `save(folder)` and put it in place as a new version.

    Order: write into a temporary folder, reserve the version number, add the metadata
    and the model card (which need the number), rename into `v{N}`, then mark the row
    ready. A crash at any point leaves either a `.tmp-*` folder (swept later) or a row
    that never became ready, never a partial `v{N}` nor one without its card.
    """
    settings.models_path.mkdir(parents=True, exist_ok=True)
    tmp = settings.models_path / f".tmp-{uuid.uuid4().hex}"
    try:
        tmp.mkdir()
        save(tmp)
        if settings.infer_backend == "onnxruntime" and not (tmp / "model.onnx").is_file():
            from app.ml.onnx_runtime import export_for_serving

            # Here, once, in the worker: API processes then only load it when they swap.
            export_for_serving(tmp, settings.max_length)
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


def _without_curves(value: Any) -> Any:
    """Lineage minus the per-step loss curves: parameters, not a log."""
    if isinstance(value, dict):
        return {k: _without_curves(v) for k, v in value.items() if k not in ("loss", "history")}
    return value


def _promotion_rows(comparison: Any) -> list[tuple[str, str]]:
    """What the promotion gate saw, for the model card."""
    if not isinstance(comparison, dict):
        return []
    rows = [
        (
            "promotion gate",
            f"rule `{comparison.get('rule')}`: {comparison.get('reason', '')}",
        ),
        (
            "compute per token",
            f"{comparison.get('relative_cost', 1.0):.2f} of the champion's",
        ),
    ]
    changed = comparison.get("test_changed_share")
    if changed is not None:
        rows.append(("test answers changed", f"{100 * changed:.1f}% of the champion's"))
    return rows


def model_card(
    settings: Settings,
    *,
    version: int,
    labels: list[str],
    parent_version: int | None,
    job_id: str | None,
    metrics: dict[str, Any],
    lineage: dict[str, Any],
    decision: str,
    now: datetime | None = None,
) -> str:
    """The README.md of a version folder: a Hugging Face model card (its front matter lets
    the Hub and `huggingface_hub.ModelCard` read it) with what an operator needs to know
    about the model without the service: where it came from, how good it is, how to load it."""
    made_by = f"retraining job `{job_id}`" if job_id else "bootstrap (the first fine-tuning)"
    how = (
        "A text classifier made by pfp-service: trained on the service's own predictions "
        "(the serving model's logits on user text), then fine-tuned on gold labels."
        if lineage.get("kind") == "retrain"
        else "A text classifier made by pfp-service: the base encoder fine-tuned on gold labels."
    )
    parent = f"v{parent_version}" if parent_version is not None else "none (the first model)"
    rows = [
        ("version", f"v{version}"),
        ("parent version", parent),
        ("made by", made_by),
        ("job decision", f"{decision} (whether it serves now: `GET /models`)"),
        ("base model", f"`{settings.base_model_path}`"),
        ("started from", f"`{lineage.get('start_path', settings.base_model_path)}`"),
        ("labels", ", ".join(f"{i} `{label}`" for i, label in enumerate(labels))),
        ("encoder layers", str(lineage.get("layers", "as the base model"))),
        *_promotion_rows(lineage.get("comparison")),
        ("written", (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")),
    ]
    split_rows = [
        f"| {split} | {m.get('accuracy', '')} | {m.get('macro_f1', '')} | {m.get('n', '')} |"
        for split, m in metrics.items()
        if isinstance(m, dict)
    ]
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "tags:",
        "- pfp-service",
        "---",
        "",
        f"# pfp-service model v{version}",
        "",
        how,
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        "## Metrics on the gold data",
        "",
        "| split | accuracy | macro-F1 | examples |",
        "| --- | --- | --- | --- |",
        *(split_rows or ["| (none) | | | |"]),
        "",
        "## Training parameters",
        "",
        "```json",
        json.dumps(_without_curves(lineage), indent=2, sort_keys=True, default=str),
        "```",
        "",
        "## How to load",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'classify = pipeline("text-classification", model="path/to/v{version}")',
        'classify("@united thanks for the upgrade!")',
        "```",
        "",
        "`config.json` carries the labels (`id2label`, `label2id`); `pfp_version.json` holds "
        "these facts as JSON, loss curves included.",
        "",
    ]
    return "\n".join(lines)


def _fsync_tree(folder: Path) -> None:
    # The rename must not become durable before the files it names.
    for path in folder.iterdir():
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


def activate_if_champion(
    store: Store, version: int, expected_champion: int | None, reason: str
) -> None:
    """Make `version` active only if `expected_champion` still is; else PublishConflict."""
    with store.session() as session:
        _lock_activations(session)
        current = versions.active_version(session)
        if current != expected_champion:
            raise PublishConflict(
                f"the active model changed from v{expected_champion} to v{current} "
                "while this candidate was evaluated"
            )
        versions.activate(session, version, reason)


def activate(store: Store, version: int, reason: str) -> None:
    """Unconditional activation (an operator's rollback); the version must be ready."""
    with store.session() as session:
        _lock_activations(session)
        row = versions.get_version(session, version)
        if row is None or row.state != "ready":
            raise ValueError(f"model version {version} is not ready to serve")
        versions.activate(session, version, reason)


def notify_swap(settings: Settings, version: int) -> None:
    """Tell API processes at once; they also poll the store, so a lost notice only delays."""
    if not settings.redis_url:
        return
    try:
        import redis

        client = redis.Redis.from_url(settings.redis_url, socket_timeout=2)
        client.publish(SWAP_CHANNEL, str(version))
        client.close()
    except Exception as exc:  # polling still delivers the swap
        log.warning("could not publish the swap notice for v%s: %s", version, exc)


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
