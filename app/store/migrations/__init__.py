"""Schema migrations (Alembic), run by every process when it opens the store.

`upgrade_to_head` brings the database to the newest revision in `versions/`. API
processes and workers may start together, so the upgrade runs in one transaction under a
lock: a PostgreSQL advisory lock, or SQLite's write lock (BEGIN IMMEDIATE). A database
made before migrations existed (the tables, no `alembic_version`) is adopted at the
baseline with its rows; one upgraded by a newer release is refused with `SchemaError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Alembic announces its autogenerate plugins at INFO when imported: noise at every start.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from sqlalchemy import BigInteger, Connection, Engine, inspect, text  # noqa: E402
from sqlalchemy.exc import OperationalError  # noqa: E402

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent
BASELINE = "0001"
# The tables `Base.metadata.create_all` made before there were migrations.
BASELINE_TABLES = frozenset(
    {"pseudo_labels", "gold_examples", "model_versions", "activations", "jobs"}
)
# Any fixed 64-bit number; PostgreSQL advisory locks are scoped to one database.
_POSTGRES_LOCK_KEY = 0x7066_7073_6368_656D
# How long a starting process waits for another one's SQLite migration (ms).
_SQLITE_LOCK_WAIT_MS = 600_000
# SQLite can answer "database is locked" at once instead of waiting out its busy timeout
# (where waiting could deadlock, as when a reader asks to become the writer), and processes
# opening a new store together have met it under load. The upgrade is one transaction, so
# it is tried again from the start, this many times at most.
_SQLITE_LOCKED_TRIES = 20


class SchemaError(RuntimeError):
    """The database's schema is not one this code can run on or upgrade."""


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, without an ini file; env.py runs on `connection`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migrations in app/store/migrations/versions"
    return head


def current_revisions(conn: Connection) -> tuple[str, ...]:
    """The revisions stamped in the database's alembic_version (empty: none)."""
    # Read directly, not through a MigrationContext, which logs at INFO on every start.
    if not inspect(conn).has_table("alembic_version"):
        return ()
    return tuple(conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars())


def upgrade_to_head(engine: Engine) -> None:
    """Create or upgrade the schema to the newest revision; safe to call from many processes."""
    tries = _SQLITE_LOCKED_TRIES if engine.dialect.name == "sqlite" else 1
    for attempt in range(1, tries + 1):
        try:
            _upgrade(engine)
            return
        except OperationalError as error:
            if "database is locked" not in str(error) or attempt == tries:
                raise
            log.info("The store is locked by another process opening it; trying again")
            time.sleep(min(0.05 * attempt, 1.0))


def _upgrade(engine: Engine) -> None:
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    with engine.connect() as conn:
        current = current_revisions(conn)
    if current == (head,):  # the usual start: nothing to do, no lock taken
        return
    _refuse_unknown(engine, script, current)
    with engine.connect() as conn, _migration_lock(conn):
        # Re-read under the lock: another process may have migrated meanwhile.
        current = current_revisions(conn)
        _refuse_unknown(engine, script, current)
        config = alembic_config(conn)
        if not current and _adopt_legacy(conn):
            command.stamp(config, BASELINE)
        if current_revisions(conn) != (head,):
            log.info("Upgrading the store's schema from %s to %s", current or "empty", head)
            with _alembic_quiet_unless_debug():
                command.upgrade(config, "head")


@contextmanager
def _alembic_quiet_unless_debug() -> Iterator[None]:
    """Alembic's own INFO lines (its dialect's defaults, each revision it runs) say again
    what the line above says: shown only where the service logs at DEBUG."""
    runtime = logging.getLogger("alembic.runtime.migration")
    level = runtime.level
    if not log.isEnabledFor(logging.DEBUG):
        runtime.setLevel(logging.WARNING)
    try:
        yield
    finally:
        runtime.setLevel(level)


def _refuse_unknown(engine: Engine, script: ScriptDirectory, current: tuple[str, ...]) -> None:
    known = {revision.revision for revision in script.walk_revisions()}
    unknown = [revision for revision in current if revision not in known]
    if unknown:
        raise SchemaError(
            f"The store at {engine.url.render_as_string(hide_password=True)} is at schema "
            f"revision {', '.join(unknown)}, which this version of pfp-service does not know "
            f"(its newest is {script.get_current_head()}): a newer release has upgraded it. "
            "Run that release or a newer one, or restore a backup taken before the upgrade."
        )


@contextmanager
def _migration_lock(conn: Connection) -> Iterator[None]:
    """One transaction that holds the database's migration lock; committed on success."""
    if conn.dialect.name == "postgresql":
        # Released by the commit or rollback; DDL is transactional on PostgreSQL.
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _POSTGRES_LOCK_KEY})
        yield
        conn.commit()
    elif conn.dialect.name == "sqlite":
        # Pragmas are no-ops inside a transaction, so they go first. Batch migrations copy
        # tables, which foreign-key enforcement would refuse halfway through.
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.exec_driver_sql(f"PRAGMA busy_timeout={_SQLITE_LOCK_WAIT_MS}")
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock, for the whole upgrade
            yield
            conn.commit()
        finally:
            conn.rollback()
            # The connection goes back to the store's pool: restore make_engine's pragmas.
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.exec_driver_sql("PRAGMA busy_timeout=30000")
            conn.commit()
    else:
        raise SchemaError(f"unsupported database for the store: {conn.dialect.name}")


def _adopt_legacy(conn: Connection) -> bool:
    """True if this unstamped database holds the tables of the pre-migration code.

    Such a database is stamped at the baseline and keeps its rows. An empty one gets the
    migrations from the start; one with only some of the tables is not ours to touch.
    """
    present = BASELINE_TABLES & set(inspect(conn).get_table_names())
    if not present:
        return False
    if present != BASELINE_TABLES:
        raise SchemaError(
            f"The store has the tables {sorted(present)} but not "
            f"{sorted(BASELINE_TABLES - present)}, and no alembic_version: it was not made by "
            "pfp-service. Point DATABASE_URL at an empty database or at this service's own."
        )
    _widen_legacy_ids(conn)
    log.info("Adopting a store made before schema migrations: stamping it at %s", BASELINE)
    return True


def _widen_legacy_ids(conn: Connection) -> None:
    """Give a PostgreSQL store made before 64-bit ids the baseline's BIGINT columns.

    `create_all` never altered existing tables, so stores made before pseudo-label ids
    became 64-bit still have 32-bit ones. (On SQLite both are the same 64-bit integer.)
    """
    if conn.dialect.name != "postgresql":
        return
    inspector = inspect(conn)
    for table, column in (("pseudo_labels", "id"), ("jobs", "pool_upto_id")):
        types = {c["name"]: c["type"] for c in inspector.get_columns(table)}
        if isinstance(types[column], BigInteger):
            continue
        log.info("Widening %s.%s to BIGINT", table, column)
        conn.exec_driver_sql(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE BIGINT")
        sequence = conn.scalar(text(f"SELECT pg_get_serial_sequence('{table}', '{column}')"))
        if sequence:  # SERIAL made an int4 sequence; it would stop at 2**31 - 1
            conn.exec_driver_sql(f"ALTER SEQUENCE {sequence} AS BIGINT")
