"""One way to show a moment everywhere (API, CLI, dashboard): UTC, ISO 8601, with `Z`.

The store keeps UTC; SQLite hands times back without a zone, PostgreSQL with one. Every
time leaves the service through these, so a reader never has to guess the zone.
"""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(moment: datetime) -> datetime:
    """`moment` in UTC; a time without a zone is taken as UTC (how the store keeps it)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def iso_utc(moment: datetime, timespec: str = "seconds") -> str:
    """`2026-12-01T02:48:48Z`: ISO 8601 in UTC, to the second by default."""
    return as_utc(moment).replace(tzinfo=None).isoformat(timespec=timespec) + "Z"
