"""`pfp retention`: a dry run by default, `--apply` to run it (followed to its end), and
`list`; against a real API in a thread, with the worker's part run by the test."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pyarrow.parquet as pq

from app.store import pseudo_labels
from tests.cli.test_cli import LiveApi, pfp
from tests.conftest import ADMIN, make_settings
from workers.retention import run_retention


def test_dry_run_then_apply_then_list(published_copy, tiny_base: Path, gold_file: Path, capsys):
    with LiveApi(make_settings(published_copy.data_dir, tiny_base, gold_file)) as live:
        httpx.post(
            f"{live.url}/label/batch",
            json={"texts": [f"@united old {i}" for i in range(30)]},
            headers=ADMIN,
        ).raise_for_status()
        before = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

        status, out, err = pfp(capsys, live, "retention", "run", "--before", before)
        assert status == 0 and "30 pseudo-labels created before" in out
        assert "dry run" in err and live.queue.sent == []
        status, out, _ = pfp(capsys, live, "retention", "run", "--before", "2000-01-01")
        assert status == 0 and "Nothing to remove" in out

        # The worker's part, once the run is queued.
        def work() -> None:
            while not live.queue.sent:
                threading.Event().wait(0.05)
            run_retention(live.queue.sent[-1][1][0], live.settings, live.store)

        worker = threading.Thread(target=work)
        worker.start()
        argv = ("retention", "run", "--before", before, "--apply", "--interval", "0.1")
        status, out, _ = pfp(capsys, live, *argv)
        worker.join(30)
        assert status == 0, out
        assert "Started retention run 1: 30 rows" in out
        assert "Retention run 1 succeeded: 30 rows deleted." in out
        path = out.split("Archive (on the worker's disk): ")[1].strip()
        assert pq.read_table(path).num_rows == 30
        with live.store.session() as s:
            assert pseudo_labels.list_pseudo_labels(s) == []

        status, out, _ = pfp(capsys, live, "retention", "list")
        assert status == 0 and "succeeded" in out and "30/30" in out and path in out
        # Nothing is left: --apply says so, with the API's reason, and exits 1.
        status, _, err = pfp(capsys, live, *argv)
        assert status == 1 and "nothing to remove" in err
        status, _, err = pfp(capsys, live, "retention", "run", "--before", "yesterday")
        assert status == 1 and "before" in err
