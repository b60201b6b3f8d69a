"""A retention run, as a plain function (Celery only calls it): archive the run's range of
pseudo-labels to Parquet, then delete it from the store in batches.

Nothing is lost: the archive is written under a temporary name, flushed to disk and
renamed before the first row is deleted, and its path is recorded on the run, so a run
picked up again after its worker died deletes what is left without writing the archive
a second time (which would now miss the rows already gone). The store's retention mark
(app/store/retention.py) keeps jobs off the range from the start.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path

from app.core.config import Settings
from app.core.label_export import exported_row, parquet_batch, parquet_schema
from app.store import pseudo_labels, retention
from app.store.database import Store

log = logging.getLogger(__name__)

# Rows per Parquet row group and per archive read; and rows per delete transaction: what
# /label's inserts may wait behind (a few milliseconds on either database).
ARCHIVE_PAGE = 10_000
DELETE_BATCH = 5_000


def archive_dir(settings: Settings) -> Path:
    return settings.data_dir / "archive"


def archive_path(settings: Settings, run_id: int, upto_id: int) -> Path:
    return archive_dir(settings) / f"pseudo-labels-run{run_id}-upto{upto_id}.parquet"


def run_retention(run_id: int, settings: Settings, store: Store) -> None:
    """Run `run_id` to its end; safe to call again for the same run."""
    with store.session() as session:
        run = retention.get_run(session, run_id)
        if run is None or run.status != retention.RUNNING:
            log.info("retention run %s: nothing to do (%s)", run_id, run and run.status)
            return
        upto, wants_archive, archived = run.upto_id, run.archive, run.archive_path
    try:
        if wants_archive and not (archived and Path(archived).is_file()):
            started = time.perf_counter()
            path, rows = write_archive(settings, store, run_id, upto)
            with store.session() as session:
                run = retention.get_run(session, run_id)
                assert run is not None
                run.archive_path = str(path)
            log.info(
                "retention run %s: archived %d rows to %s in %.1f s",
                run_id,
                rows,
                path,
                time.perf_counter() - started,
            )
        deleted = delete_range(store, run_id, upto)
    except Exception as exc:
        log.exception("retention run %s failed", run_id)
        with store.session() as session:
            run = retention.get_run(session, run_id)
            if run is not None:
                retention.finish(run, "failed", f"{type(exc).__name__}: {exc}")
        return
    with store.session() as session:
        run = retention.get_run(session, run_id)
        assert run is not None
        retention.finish(run, "succeeded")
    log.info("retention run %s: deleted %d rows with id <= %d", run_id, deleted, upto)


def write_archive(settings: Settings, store: Store, run_id: int, upto: int) -> tuple[Path, int]:
    """Every stored row with id <= `upto` into one Parquet file (the layout of `pfp export`),
    a row group at a time; the file appears under its name only once complete."""
    import pyarrow.parquet as pq

    final = archive_path(settings, run_id, upto)
    final.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own: a run delivered twice must not interleave two writers in one file.
    partial = final.with_name(f"{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    rows, after = 0, 0
    try:
        with pq.ParquetWriter(partial, parquet_schema()) as writer:
            while True:
                with store.session() as session:
                    page = [
                        exported_row(r)
                        for r in pseudo_labels.export_rows(
                            session, after_id=after, upto_id=upto, limit=ARCHIVE_PAGE
                        )
                    ]
                if not page:
                    break
                writer.write_table(parquet_batch(page))
                rows += len(page)
                after = page[-1]["id"]
        with partial.open("rb+") as handle:
            os.fsync(handle.fileno())
        partial.replace(final)
    finally:
        partial.unlink(missing_ok=True)
    return final, rows


def delete_range(store: Store, run_id: int, upto: int) -> int:
    """Delete ids <= `upto` in short transactions, counting them on the run as it goes."""
    total, after = 0, 0
    while True:
        with store.session() as session:
            deleted, after = retention.delete_batch(session, after, upto, DELETE_BATCH)
            run = retention.get_run(session, run_id)
            if run is not None and deleted:
                run.deleted = (run.deleted or 0) + deleted
        total += deleted
        if after >= upto:
            return total
