"""The store on SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import timedelta

from app.store import gold, jobs, pseudo_labels, versions
from app.store.pseudo_labels import Prediction
from app.store.tables import utcnow


def _predictions(n: int, version: int = 1) -> list[Prediction]:
    return [
        Prediction(
            f"text {i} ✈️ \u0001\u007f\u200bctl",
            "positive" if i % 2 else "negative",
            0.5 + i / (2 * n),
            [0.1 * i, -0.2, 0.3],
            version,
        )
        for i in range(n)
    ]


def test_predictions_round_trip_exactly(any_store):
    with any_store.session() as s:
        rows = pseudo_labels.add_predictions(s, _predictions(5))
        ids = [r.id for r in rows]
    assert ids == sorted(ids) and len(set(ids)) == 5
    with any_store.session() as s:
        page = pseudo_labels.list_pseudo_labels(s, limit=10)
    assert [r.text for r in page] == [p.text for p in _predictions(5)]
    assert page[3].logits == [0.1 * 3, -0.2, 0.3]


def test_pages_and_filters(any_store):
    with any_store.session() as s:
        pseudo_labels.add_predictions(s, _predictions(10, version=1) + _predictions(4, version=2))
    with any_store.session() as s:
        first = pseudo_labels.list_pseudo_labels(s, limit=6)
        second = pseudo_labels.list_pseudo_labels(s, after_id=first[-1].id, limit=100)
        assert len(first) == 6 and len(second) == 8
        assert {r.id for r in first}.isdisjoint({r.id for r in second})
        assert all(
            r.model_version == 2 for r in pseudo_labels.list_pseudo_labels(s, model_version=2)
        )
        assert len(pseudo_labels.list_pseudo_labels(s, model_version=2)) == 4
        confident = pseudo_labels.list_pseudo_labels(s, min_confidence=0.9)
        assert confident and all(r.confidence >= 0.9 for r in confident)
        assert all(
            r.label == "positive" for r in pseudo_labels.list_pseudo_labels(s, label="positive")
        )
        future = utcnow() + timedelta(hours=1)
        assert pseudo_labels.list_pseudo_labels(s, since=future) == []
        assert pseudo_labels.count_after(s, first[-1].id) == 8
        assert pseudo_labels.max_id(s) == second[-1].id


def test_gold_import_skips_duplicates_and_counts_splits(any_store):
    items = [gold.GoldItem(f"g{i}", "neutral", gold.SPLITS[i % 3]) for i in range(9)]
    with any_store.session() as s:
        assert gold.import_gold(s, items, "test") == (9, 0)
    with any_store.session() as s:
        assert gold.import_gold(
            s, items[:4] + [gold.GoldItem("new", "positive", "train")], "t"
        ) == (1, 4)
        assert gold.split_counts(s) == {"train": 4, "dev": 3, "test": 3, "gate": 0}
        texts, labels = gold.load_split(s, "train")
        assert texts == ["g0", "g3", "g6", "new"] and labels[-1] == "positive"
        assert gold.gold_labels(s) == ["neutral", "positive"]


def test_split_for_is_stable_and_roughly_70_10_10_10():
    splits = [gold.split_for(f"text number {i}") for i in range(3000)]
    assert splits == [gold.split_for(f"text number {i}") for i in range(3000)]
    assert 0.65 < splits.count("train") / 3000 < 0.75
    assert 0.07 < splits.count("test") / 3000 < 0.13
    assert 0.07 < splits.count("gate") / 3000 < 0.13
    # The gate split is cut from what was train: a text's dev or test split is unchanged.
    before = [gold.split_for(f"text number {i}", gate_fraction=0.0) for i in range(3000)]
    assert [s for s in before if s != "train"] == [s for s in splits if s in ("dev", "test")]


def test_activation_log_newest_wins(any_store):
    with any_store.session() as s:
        assert versions.active_version(s) is None
        for _ in range(2):
            row = versions.create_version(
                s,
                labels=["a", "b"],
                parent_version=None,
                job_id=None,
                metrics={},
                lineage={},
                decision="published",
            )
            row.state = "ready"
        versions.activate(s, 1, "first")
        versions.activate(s, 2, "second")
        assert versions.active_version(s) == 2
        versions.activate(s, 1, "rollback")
        assert versions.active_version(s) == 1
        assert [a.reason for a in versions.activations(s)] == ["rollback", "second", "first"]


def test_job_marks_and_stale_detection(any_store):
    with any_store.session() as s:
        old = jobs.create_job(s, {}, pool_upto_id=10, trigger="api")
        old.status = "running"
        old.heartbeat_at = utcnow() - timedelta(hours=2)
        assert jobs.latest_pool_mark(s) == 10
        assert jobs.has_unfinished(s)
        stale = jobs.stale_running(s, utcnow() - timedelta(hours=1))
        assert [j.id for j in stale] == [old.id]
        jobs.finish(old, "failed", "boom")
        assert not jobs.has_unfinished(s)
        # A failed job's pool does not count as consumed.
        assert jobs.latest_pool_mark(s) == 0


def test_the_writers_bulk_insert_returns_ids_in_order(any_store):
    """The API's store writer inserts with one INSERT ... RETURNING; every caller's answer
    carries the id of its own row."""
    preds = _predictions(7, version=3)
    with any_store.session() as s:
        ids = pseudo_labels.insert_predictions(s, preds)
        assert pseudo_labels.insert_predictions(s, []) == []
    assert ids == sorted(ids) and len(set(ids)) == 7
    with any_store.session() as s:
        rows = {r.id: r for r in pseudo_labels.list_pseudo_labels(s, limit=100)}
    for row_id, p in zip(ids, preds, strict=True):
        row = rows[row_id]
        assert (row.text, row.label, row.model_version, row.logits) == (
            p.text,
            p.label,
            p.model_version,
            p.logits,
        )
        assert row.created_at is not None
