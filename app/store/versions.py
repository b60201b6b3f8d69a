"""Model versions and the activation log (which version serves)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.store.tables import Activation, ModelVersion

# The `decision` of a teacher version (workers/teacher.py): a stronger model made to teach
# later students, recorded like any version but never published by a job.
TEACHER = "teacher"


def active_version(session: Session) -> int | None:
    """The version of the newest activation, or None before the first model."""
    return session.scalar(select(Activation.version).order_by(Activation.id.desc()).limit(1))


def active_activation(session: Session) -> tuple[int, int] | None:
    """(activation id, version) of the newest activation, or None before the first model."""
    row = session.execute(
        select(Activation.id, Activation.version).order_by(Activation.id.desc()).limit(1)
    ).first()
    return (row[0], row[1]) if row else None


def create_version(
    session: Session,
    *,
    labels: list[str],
    parent_version: int | None,
    job_id: str | None,
    metrics: dict[str, Any],
    lineage: dict[str, Any],
    decision: str,
) -> ModelVersion:
    """Reserve a version number; its folder is not yet in place (state `writing`)."""
    row = ModelVersion(
        state="writing",
        decision=decision,
        labels=labels,
        parent_version=parent_version,
        job_id=job_id,
        metrics=metrics,
        lineage=lineage,
    )
    session.add(row)
    session.flush()
    return row


def get_version(session: Session, version: int) -> ModelVersion | None:
    return session.get(ModelVersion, version)


def list_versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.version.desc())))


def activate(session: Session, version: int, reason: str) -> Activation:
    row = Activation(version=version, reason=reason)
    session.add(row)
    session.flush()
    return row


def activations(session: Session, limit: int = 50) -> list[Activation]:
    return list(session.scalars(select(Activation).order_by(Activation.id.desc()).limit(limit)))


def label_sets(session: Session) -> dict[int, list[str]]:
    """Label order of every version: stored logits are only meaningful in their model's order."""
    return {
        v: list(labels)
        for v, labels in session.execute(select(ModelVersion.version, ModelVersion.labels)).all()
    }
