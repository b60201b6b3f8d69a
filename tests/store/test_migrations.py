"""Schema migrations on SQLite and PostgreSQL: a fresh store, a store made before
migrations (kept with its rows), the migrations matching the models, a store from a newer
release (refused), and processes starting together."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, MetaData, create_engine, func, inspect, select
from sqlalchemy.pool import NullPool

from app.store.database import Store
from app.store.migrations import (
    BASELINE,
    BASELINE_TABLES,
    SchemaError,
    alembic_config,
    head_revision,
)
from app.store.tables import Activation, Base, GoldExample, Job, PseudoLabel

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a new SQLite file, or a new PostgreSQL database (dropped after)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def raw_engine(db_url: str) -> Iterator[Engine]:
    """An engine that migrates nothing, to look at the database from outside the Store."""
    engine = create_engine(db_url, poolclass=NullPool)
    yield engine
    engine.dispose()


def open_store(url: str) -> None:
    Store(url).dispose()


def revisions(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(MigrationContext.configure(conn).get_current_heads())


def schema_drift(engine: Engine) -> list[object]:
    """What `alembic revision --autogenerate` would put in a new migration."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def fill_like_the_old_code(engine: Engine) -> None:
    """A store as releases before migrations left it: the baseline's tables (what their
    `create_all` made), no alembic_version, and some rows. Built from revision 0001 and
    written through reflected tables, so it stays the old schema when the models move on."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), BASELINE)
        conn.exec_driver_sql("DROP TABLE alembic_version")
        old = MetaData()
        old.reflect(conn)
        rows: dict[str, list[dict[str, object]]] = {
            "model_versions": [
                dict(
                    version=1,
                    state="ready",
                    decision="published",
                    labels=["neg", "pos"],
                    metrics={},
                    lineage={},
                    created_at=now,
                )
            ],
            "activations": [dict(version=1, reason="bootstrap", activated_at=now)],
            "pseudo_labels": [
                dict(
                    text=f"text {i} ✈️",
                    label="pos",
                    confidence=0.9,
                    logits=[0.1, 2.0],
                    model_version=1,
                    created_at=now,
                )
                for i in range(5)
            ],
            "gold_examples": [
                dict(
                    text_sha256="a" * 64,
                    text="gold",
                    label="neg",
                    split="dev",
                    source="api",
                    created_at=now,
                )
            ],
            "jobs": [
                dict(
                    id="j1",
                    status="succeeded",
                    stage="done",
                    progress=1.0,
                    params={"seed": 13},
                    metrics={},
                    history={},
                    pool_upto_id=5,
                    trigger="api",
                    cancel_requested=False,
                    created_at=now,
                )
            ],
        }
        for table, values in rows.items():  # in this order: activations refer to versions
            conn.execute(old.tables[table].insert(), values)


def test_an_empty_database_is_migrated_to_head(db_url: str, raw_engine: Engine):
    store = Store(db_url)
    with store.session() as session:
        session.add(
            PseudoLabel(text="hi", label="x", confidence=1.0, logits=[1.0], model_version=1)
        )
    store.dispose()

    assert BASELINE_TABLES | {"alembic_version"} <= set(inspect(raw_engine).get_table_names())
    assert revisions(raw_engine) == [head_revision()]
    open_store(db_url)  # a second start finds nothing to do
    assert revisions(raw_engine) == [head_revision()]


def test_a_store_made_before_migrations_is_stamped_and_keeps_its_rows(
    db_url: str, raw_engine: Engine
):
    fill_like_the_old_code(raw_engine)
    assert revisions(raw_engine) == []

    store = Store(db_url)
    with store.session() as session:
        texts = session.scalars(select(PseudoLabel.text).order_by(PseudoLabel.id)).all()
        assert texts == [f"text {i} ✈️" for i in range(5)]
        assert session.scalar(select(Activation.version)) == 1
        assert session.scalar(select(GoldExample.text)) == "gold"
        job = session.get(Job, "j1")
        assert job is not None and job.params == {"seed": 13} and job.pool_upto_id == 5
        # Ids go on after the old rows.
        row = PseudoLabel(text="new", label="x", confidence=1.0, logits=[1.0], model_version=1)
        session.add(row)
        session.flush()
        assert row.id == 6
        # Retention may delete the newest rows: their ids never come back (on SQLite the
        # upgrade rebuilt the table with AUTOINCREMENT, keeping rows, ids and indexes).
        session.delete(row)
        session.flush()
        again = PseudoLabel(text="newer", label="x", confidence=1.0, logits=[1.0], model_version=1)
        session.add(again)
        session.flush()
        assert again.id == 7
    store.dispose()
    assert revisions(raw_engine) == [head_revision()]
    indexes = {i["name"] for i in inspect(raw_engine).get_indexes("pseudo_labels")}
    assert {"ix_pseudo_labels_created_at", "ix_pseudo_labels_model_version"} <= indexes


@pytest.mark.parametrize("made_by", ["migrations", "pre-migration code"])
def test_the_migrations_match_the_models(db_url: str, raw_engine: Engine, made_by: str):
    """Fails when a model changes without a migration: see docs/operations.md, "Upgrading"."""
    if made_by == "pre-migration code":
        fill_like_the_old_code(raw_engine)
    open_store(db_url)
    drift = schema_drift(raw_engine)
    assert drift == [], (
        f"app/store/tables.py and app/store/migrations/versions differ on "
        f"{raw_engine.dialect.name}: {drift}. Add a migration with `alembic -x "
        "url=sqlite:////tmp/schema.db upgrade head && alembic -x url=sqlite:////tmp/schema.db "
        'revision --autogenerate --rev-id NNNN -m "what changed"` (docs/operations.md).'
    )


def test_a_postgres_store_from_before_64_bit_ids_is_widened(postgres_url: str):
    engine = create_engine(postgres_url, poolclass=NullPool)
    fill_like_the_old_code(engine)
    with engine.begin() as conn:  # the schema of releases before 64-bit pseudo-label ids
        conn.exec_driver_sql("ALTER TABLE pseudo_labels ALTER COLUMN id TYPE INTEGER")
        conn.exec_driver_sql("ALTER SEQUENCE pseudo_labels_id_seq AS INTEGER")
        conn.exec_driver_sql("ALTER TABLE jobs ALTER COLUMN pool_upto_id TYPE INTEGER")
    assert schema_drift(engine) != []

    open_store(postgres_url)
    assert schema_drift(engine) == []
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM pseudo_labels").scalar() == 5
        sequence_type = conn.exec_driver_sql(
            "SELECT data_type FROM information_schema.sequences "
            "WHERE sequence_name = 'pseudo_labels_id_seq'"
        ).scalar()
        assert sequence_type == "bigint"
    engine.dispose()


def test_the_review_queues_arrive_on_a_store_at_0002_and_go_with_its_downgrade(
    db_url: str, raw_engine: Engine
):
    with raw_engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0002")
    assert "review_items" not in inspect(raw_engine).get_table_names()

    open_store(db_url)
    indexes = {i["name"]: i for i in inspect(raw_engine).get_indexes("review_items")}
    where = f"{raw_engine.dialect.name}_where"
    # One item per text in the uncertainty queue, per job and text in the disagreement one.
    for name, columns, queue in [
        ("uq_review_items_uncertainty_text", ["text_sha256"], "uncertainty"),
        ("uq_review_items_disagreement_job_text", ["job_id", "text_sha256"], "disagreement"),
    ]:
        index = indexes[name]
        assert index["unique"] and index["column_names"] == columns
        assert queue in str(index["dialect_options"][where])
    assert indexes["ix_review_items_queue_status"]["column_names"] == ["queue", "status"]

    with raw_engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0002")
    assert "review_items" not in inspect(raw_engine).get_table_names()
    assert revisions(raw_engine) == ["0002"]


def test_a_store_from_a_newer_release_is_refused(db_url: str, raw_engine: Engine):
    open_store(db_url)
    with raw_engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_from_the_future'")

    with pytest.raises(SchemaError) as refused:
        Store(db_url)
    message = str(refused.value)
    assert "9999_from_the_future" in message and "newer release" in message
    assert head_revision() in message
    assert revisions(raw_engine) == ["9999_from_the_future"]  # left as it was


def test_a_database_with_only_some_of_the_tables_is_refused(db_url: str, raw_engine: Engine):
    with raw_engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE jobs (id VARCHAR(32) PRIMARY KEY)")
    with pytest.raises(SchemaError, match="not made by pfp-service"):
        Store(db_url)
    assert revisions(raw_engine) == []


_START_WHEN_TOLD = """
import sys, time
from pathlib import Path
from app.store.database import Store
url, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.002)
Store(url).dispose()
"""


def test_processes_starting_together_on_an_empty_database_all_succeed(
    db_url: str, raw_engine: Engine, tmp_path: Path
):
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(4)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _START_WHEN_TOLD, db_url, str(r), str(go)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in ready
    ]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # all imported: they reach the migration within milliseconds of each other
    results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
    assert [rc for rc, _ in results] == [0, 0, 0, 0], results

    assert revisions(raw_engine) == [head_revision()]
    with raw_engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Base.metadata.tables["jobs"])) == 0
    assert schema_drift(raw_engine) == []


def _locked_then_real(monkeypatch: pytest.MonkeyPatch, times: int, message: str) -> list[int]:
    """Make the store's upgrade fail `times` times with SQLite's `message`, then run."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from app.store import migrations

    real, calls = migrations._upgrade, []

    def flaky(engine: Engine) -> None:
        calls.append(1)
        if len(calls) <= times:
            raise OperationalError("PRAGMA journal_mode=WAL", {}, sqlite3.OperationalError(message))
        real(engine)

    monkeypatch.setattr(migrations, "_upgrade", flaky)
    return calls


def test_a_store_another_process_has_locked_for_a_moment_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # What processes opening a new SQLite store together can meet: "database is locked"
    # at once, where SQLite will not wait for the other.
    calls = _locked_then_real(monkeypatch, 3, "database is locked")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    Store(url).dispose()
    assert len(calls) == 4
    engine = create_engine(url)
    try:
        assert revisions(engine) == [head_revision()]
    finally:
        engine.dispose()


def test_other_database_errors_are_not_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from sqlalchemy.exc import OperationalError

    calls = _locked_then_real(monkeypatch, 3, "disk I/O error")
    with pytest.raises(OperationalError, match="disk I/O error"):
        Store(f"sqlite:///{tmp_path / 'store.db'}")
    assert len(calls) == 1


@pytest.mark.parametrize(("level", "shown"), [("info", False), ("debug", True)])
def test_upgrading_says_it_once_and_alembics_own_lines_only_at_debug(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], level: str, shown: bool
) -> None:
    """A new user's first screen: the service's one line about the schema, not Alembic's
    dialect defaults and revisions (still there with LOG_LEVEL=debug)."""
    import logging

    from app.core import logs
    from app.core.config import Settings

    root = logging.getLogger()
    before = root.level
    logs.configure_logging(Settings(data_dir=tmp_path, log_level=level))
    try:
        capsys.readouterr()
        open_store(f"sqlite:///{tmp_path / 'store.db'}")
        err = capsys.readouterr().err
    finally:
        for handler in [h for h in root.handlers if isinstance(h, logs.ServiceLogHandler)]:
            root.removeHandler(handler)
        root.setLevel(before)
    assert "Upgrading the store's schema from empty to" in err
    alembic_lines = [line for line in err.splitlines() if "Context impl" in line]
    assert bool(alembic_lines) == shown, err[-2000:]
