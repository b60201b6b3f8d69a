"""A stronger teacher's scores of stored texts, per teacher version and text digest."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.store.tables import TeacherScore

# Digests per IN (...) query: well under every database's limit on bound parameters.
CHUNK = 500


def cached(session: Session, version: int, digests: Sequence[str]) -> dict[str, list[float]]:
    """The logits teacher `version` gave each of `digests` that it has scored."""
    found: dict[str, list[float]] = {}
    unique = list(dict.fromkeys(digests))
    for start in range(0, len(unique), CHUNK):
        rows = session.execute(
            select(TeacherScore.text_sha256, TeacherScore.logits).where(
                TeacherScore.teacher_version == version,
                TeacherScore.text_sha256.in_(unique[start : start + CHUNK]),
            )
        )
        found.update((digest, list(logits)) for digest, logits in rows)
    return found


def save(session: Session, version: int, scores: dict[str, list[float]]) -> int:
    """Keep `scores` (digest -> logits) of teacher `version`, skipping digests it already
    has (a job that ran again, or two at once); returns how many were added."""
    known = cached(session, version, list(scores))
    new = [
        TeacherScore(teacher_version=version, text_sha256=digest, logits=logits)
        for digest, logits in scores.items()
        if digest not in known
    ]
    session.add_all(new)
    session.flush()
    return len(new)


def count(session: Session, version: int) -> int:
    """How many texts teacher `version` has scored."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(TeacherScore)
            .where(TeacherScore.teacher_version == version)
        )
        or 0
    )
