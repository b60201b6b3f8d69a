"""Retention runs (workers/retention.py) on SQLite and PostgreSQL: the range is archived to
Parquet, then deleted in batches; nothing is lost or half written, and a run picked up
again after its worker died finishes without writing its archive twice."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import workers.retention as worker
from app.core.config import Settings
from app.serving.telemetry import read_snapshot
from app.store import pseudo_labels, retention
from app.store.database import Store
from app.store.pseudo_labels import Prediction
from app.store.tables import PseudoLabel


@pytest.fixture
def filled(any_store: Store, tmp_path: Path) -> tuple[Store, Settings]:
    """100 stored predictions, one second apart, and settings whose DATA_DIR is tmp_path."""
    with any_store.session() as s:
        pseudo_labels.insert_predictions(
            s,
            [
                Prediction(f'text {i}, with "quotes"\n', "neutral", 0.5 + i / 1000, [0.1, i], 1)
                for i in range(100)
            ],
        )
        for row in s.query(PseudoLabel):
            row.created_at = row.created_at + timedelta(seconds=row.id)
    return any_store, Settings(data_dir=tmp_path / "data")


def rows(store: Store) -> list[PseudoLabel]:
    with store.session() as s:
        return pseudo_labels.list_pseudo_labels(s, limit=1000)


def start(store: Store, upto_id: int, archive: bool = True) -> int:
    """A run removing ids <= upto_id, as POST /admin/retention starts it."""
    with store.session() as s:
        before = s.get(PseudoLabel, upto_id + 1).created_at
        plan = retention.plan(s, before)
        assert (plan.upto_id, plan.rows) == (upto_id, upto_id - min(r.id for r in rows(store)) + 1)
        return retention.start_run(s, plan, archive).id


def run_row(store: Store, run_id: int):
    with store.session() as s:
        return retention.get_run(s, run_id)


def test_a_run_archives_the_range_then_deletes_it(filled, monkeypatch):
    store, settings = filled
    before = {r.id: r for r in rows(store)}
    monkeypatch.setattr(worker, "DELETE_BATCH", 7)  # several batches
    run_id = start(store, 60)
    worker.run_retention(run_id, settings, store)
    run = run_row(store, run_id)
    assert (run.status, run.deleted, run.rows, run.error) == ("succeeded", 60, 60, None)
    assert [r.id for r in rows(store)] == list(range(61, 101))
    table = pq.read_table(run.archive_path).to_pylist()
    assert [r["id"] for r in table] == list(range(1, 61))
    for item in table:  # every field as it was stored
        stored = before[item["id"]]
        assert (item["text"], item["label"], item["logits"]) == (
            stored.text,
            stored.label,
            stored.logits,
        )
        assert item["confidence"] == pytest.approx(stored.confidence)
        assert item["created_at"].replace(tzinfo=None) == stored.created_at.replace(tzinfo=None)
    assert list(Path(run.archive_path).parent.iterdir()) == [Path(run.archive_path)]
    with store.session() as s:
        assert retention.deleted_upto(s) == 60
        # The same date again: nothing is left to remove.
        assert retention.plan(s, before[61].created_at).rows == 0
    worker.run_retention(run_id, settings, store)  # a second delivery changes nothing
    assert len(rows(store)) == 40
    # /metrics' count of stored rows (read without counting the big table) follows.
    assert read_snapshot(store).pseudo_labels == 40


def test_without_an_archive_the_range_is_only_deleted(filled):
    store, settings = filled
    run_id = start(store, 30, archive=False)
    worker.run_retention(run_id, settings, store)
    run = run_row(store, run_id)
    assert run.status == "succeeded" and run.archive_path is None
    assert not (settings.data_dir / "archive").exists() or not any(
        (settings.data_dir / "archive").iterdir()
    )
    assert len(rows(store)) == 70


def test_a_failed_archive_leaves_no_file_and_every_row(filled, monkeypatch):
    store, settings = filled
    monkeypatch.setattr(worker, "ARCHIVE_PAGE", 10)
    real = worker.parquet_batch
    calls = []

    def disk_full(items):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(items)

    monkeypatch.setattr(worker, "parquet_batch", disk_full)
    run_id = start(store, 60)
    worker.run_retention(run_id, settings, store)
    run = run_row(store, run_id)
    assert run.status == "failed" and "No space left on device" in run.error
    assert len(rows(store)) == 100 and run.deleted == 0
    assert list((settings.data_dir / "archive").iterdir()) == []  # no .partial left
    with store.session() as s:
        # The mark stays: the range may be half deleted after a failure, so jobs keep off.
        assert retention.deleted_upto(s) == 60
    # Once the disk has room, a new run of the same date removes the range.
    monkeypatch.setattr(worker, "parquet_batch", real)
    again = start(store, 60)
    worker.run_retention(again, settings, store)
    assert run_row(store, again).status == "succeeded" and len(rows(store)) == 40


def test_a_run_picked_up_after_its_worker_died_finishes_with_one_archive(filled, monkeypatch):
    """Celery hands an unacknowledged task to another worker: the archive written before
    the first worker died is kept, not rewritten without the rows already deleted."""
    store, settings = filled
    run_id = start(store, 60)
    path, archived = worker.write_archive(settings, store, run_id, 60)
    with store.session() as s:
        retention.get_run(s, run_id).archive_path = str(path)
        retention.delete_batch(s, 0, 60, 25)  # the dead worker's first batch
    assert archived == 60 and len(rows(store)) == 75
    written = path.stat().st_mtime_ns
    worker.run_retention(run_id, settings, store)
    run = run_row(store, run_id)
    assert run.status == "succeeded" and len(rows(store)) == 40
    assert path.stat().st_mtime_ns == written
    assert pq.read_table(path).num_rows == 60
