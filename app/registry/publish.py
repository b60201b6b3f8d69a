"""Publishing: the one way a trained model becomes a version, and the one way a version
becomes the one served.

`publish` writes the folder (`folders.write_version`), then, if the candidate won,
activates it by compare-and-set against the champion it was evaluated against and tells
the API processes. A candidate that waits for reviews is written `pending` and decided
later by `settle_pending`, with the same compare-and-set and no second folder.
Activation is a row in an append-only log; `activate` is the operator's unconditional
form (a rollback).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text as sql_text
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.registry.folders import SaveFn, version_dir, write_version
from app.store import versions
from app.store.database import Store

log = logging.getLogger(__name__)

SWAP_CHANNEL = "pfp:model-activated"


class PublishConflict(RuntimeError):
    """The active model changed after the candidate was evaluated against it."""


def _lock_activations(session: Session) -> None:
    """Serialise publishers so that two jobs cannot both win against the same champion."""
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        session.execute(sql_text("SELECT pg_advisory_xact_lock(80417)"))
    else:
        # A write as the first statement takes SQLite's write lock before the read below.
        session.execute(sql_text("UPDATE model_versions SET state = state WHERE 0 = 1"))


# The decision of a candidate written before the gate could decide it (it waits for
# reviews); `settle_pending` turns it into "published" or "rejected".
PENDING = "pending"


def _activate_if_champion(
    session: Session, version: int, expected_champion: int | None, reason: str, when: str
) -> None:
    _lock_activations(session)
    current = versions.active_version(session)
    if current != expected_champion:
        raise PublishConflict(
            f"the active model changed from v{expected_champion} to v{current} "
            f"while this candidate {when}"
        )
    versions.activate(session, version, reason)


def activate_if_champion(
    store: Store, version: int, expected_champion: int | None, reason: str
) -> None:
    """Make `version` active only if `expected_champion` still is; else PublishConflict."""
    with store.session() as session:
        _activate_if_champion(session, version, expected_champion, reason, "was evaluated")


def settle_pending(
    session: Session, version: int, *, wins: bool, expected_champion: int | None, reason: str
) -> str | None:
    """Decide candidate `version`, written `pending`: if it `wins`, make it active by
    compare-and-set against `expected_champion` (as `publish` does) and record it
    published; else, or if the champion changed meanwhile, record it rejected. Returns
    that conflict, if any. Runs in the caller's transaction; once it has committed, the
    caller tells the API processes (`notify_swap`)."""
    row = versions.get_version(session, version)
    if row is None or row.decision != PENDING:
        raise ValueError(f"v{version} is not a candidate waiting for its decision")
    if not wins:
        row.decision = "rejected"
        return None
    try:
        _activate_if_champion(session, version, expected_champion, reason, "waited for reviews")
    except PublishConflict as exc:
        row.decision = "rejected"
        return str(exc)
    row.decision = "published"
    return None


class UnknownVersion(LookupError):
    """No such version in the store."""


class NotServable(RuntimeError):
    """The version exists but cannot serve: not ready, or its folder is gone."""


def activate(settings: Settings, store: Store, version: int, reason: str) -> None:
    """Serve `version` whatever serves now (an operator's rollback, or a rejected candidate
    chosen by hand), then tell the API processes."""
    with store.session() as session:
        _lock_activations(session)
        row = versions.get_version(session, version)
        if row is None:
            raise UnknownVersion(f"no model version {version}")
        if row.state != "ready" or not version_dir(settings, version).is_dir():
            raise NotServable(f"model version {version} is {row.state} and cannot be served")
        versions.activate(session, version, reason)
    notify_swap(settings, version)


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


@dataclass(frozen=True)
class Published:
    """What became of a candidate: its version number, and whether it serves now."""

    version: int
    promoted: bool
    # Why a winning candidate does not serve: another publisher moved the champion first.
    conflict: str | None = None


def publish(
    settings: Settings,
    store: Store,
    save: SaveFn,
    *,
    labels: list[str],
    champion: int | None,
    wins: bool,
    reason: str,
    job_id: str | None,
    metrics: dict[str, Any],
    lineage: dict[str, Any],
    pending: bool = False,
) -> Published:
    """Write a candidate as a new version and, if it `wins` against `champion` (None before
    the first model), make it the one served; a `pending` one (the gate waits for reviews)
    is written and not served, for `settle_pending` to decide.

    Every candidate is kept, winner or not, so an operator can compare or activate it later.
    The activation is a compare-and-set: if the champion changed while this candidate was
    evaluated, it is recorded as rejected and the other publisher's model keeps serving.
    """
    decision = PENDING if pending else "published" if wins else "rejected"
    version = write_version(
        settings,
        store,
        save,
        labels=labels,
        parent_version=champion,
        job_id=job_id,
        metrics=metrics,
        lineage=lineage,
        decision=decision,
    )
    if pending or not wins:
        return Published(version, promoted=False)
    try:
        activate_if_champion(store, version, champion, reason)
    except PublishConflict as exc:
        with store.session() as session:
            row = versions.get_version(session, version)
            if row is not None:
                row.decision = "rejected"
        return Published(version, promoted=False, conflict=str(exc))
    notify_swap(settings, version)
    return Published(version, promoted=True)
