"""`python -m bench.store_size`'s own parts: the bulk fill writes what the app would have
stored (rows the API, the pool selection and the stats read like any other), on both
databases. The full run takes tens of minutes (`make bench-store`), so it is not run here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.store import pseudo_labels, stats
from app.store.database import Store
from bench.store_size.fill import LABELS, PER_DAY, bulk_fill, prepare_store, synthetic_rows
from bench.store_size.measure import probe_pool


def test_synthetic_rows_are_spread_up_to_now_with_consistent_logits():
    now = datetime.now(UTC)
    rows = list(synthetic_rows(3000, ["@united thanks", "@delta no"], now))
    times = [r[5] for r in rows]
    assert times == sorted(times) and now - times[-1] < timedelta(seconds=5)
    assert now - times[0] == pytest.approx(timedelta(days=3000 / PER_DAY), abs=timedelta(seconds=5))
    import json

    for text, label, confidence, logits, version, _ in rows[:200]:
        values = json.loads(logits)
        assert LABELS[values.index(max(values))] == label and 1 / 3 < confidence <= 1
        assert version == 1 and text.startswith("@")


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_bulk_fill_stores_rows_the_app_reads(database, request, tmp_path: Path):
    url = (
        f"sqlite:///{tmp_path / 'store.db'}"
        if database == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    prepare_store(url, LABELS)
    bulk_fill(url, 5000, ["@united thanks", "@delta no", "@jetblue ok"])
    store = Store(url)
    try:
        with store.session() as s:
            page = pseudo_labels.list_pseudo_labels(s, after_id=4990, limit=100)
            assert [r.id for r in page] == list(range(4991, 5001))
            assert page[-1].created_at.replace(tzinfo=UTC) > datetime.now(UTC) - timedelta(
                minutes=1
            )
            day = stats.label_buckets(
                s,
                bucket="day",
                since=datetime.now(UTC) - timedelta(days=2),
                until=datetime.now(UTC) + timedelta(hours=1),
            )
            assert sum(b.total for b in day) == 5000
    finally:
        store.dispose()
    pool = probe_pool(url, None)
    assert pool["texts"] > 4500 and pool["scanned"] == 5000 and pool["seconds"] >= 0
