"""How a job picks its pre-training pool from the store (workers/pipeline.py gather_pool,
app/ml/pool.py), on SQLite and PostgreSQL: the newest texts its step budget covers, one per
text, within the policy's bounds, read a page at a time, never below the retention mark."""

from __future__ import annotations

import pytest

import workers.pipeline as pipeline
from app.ml.job_params import JobParams, PoolParams
from app.ml.pool import PoolPolicy, pool_limit
from app.store import gold, pseudo_labels, retention, versions
from app.store.database import Store
from app.store.gold import GoldItem
from app.store.pseudo_labels import Prediction
from workers.pipeline import JobError, gather_pool

LABELS = ["negative", "neutral", "positive"]


def policy(limit: int = 0, class_cap: float = 0.0, lo=None, hi=None) -> PoolPolicy:
    pool = PoolParams(class_cap=class_cap, min_confidence=lo, max_confidence=hi)
    return PoolPolicy(pool=pool, limit=limit)


def fill(store: Store, predictions: list[tuple[str, str, float]], version: int = 1) -> None:
    with store.session() as s:
        pseudo_labels.insert_predictions(
            s,
            [
                Prediction(text, label, confidence, [float(LABELS.index(label)), 0.0, 0.0], version)
                for text, label, confidence in predictions
            ],
        )


@pytest.fixture
def pool_store(any_store: Store) -> Store:
    with any_store.session() as s:
        for labels in (LABELS, ["no", "yes"]):  # v1 serves LABELS; v2 another label set
            versions.create_version(
                s,
                labels=labels,
                parent_version=None,
                job_id=None,
                metrics={},
                lineage={},
                decision="published",
            )
    return any_store


def test_the_step_budget_sets_the_pool_limit():
    assert pool_limit(JobParams()) == 400 * 32  # the default budget, one epoch
    assert pool_limit(JobParams(pretrain_epochs=2.0)) == 200 * 32  # each text seen twice
    assert pool_limit(JobParams(pretrain_max_steps=10, batch_size=8)) == 80
    assert pool_limit(JobParams(max_pool_texts=500)) == 500
    assert pool_limit(JobParams(pretrain_step_budget=0)) == 0  # no bound: every text
    with pytest.raises(ValueError, match="min_confidence is above max_confidence"):
        JobParams(min_confidence=0.9, max_confidence=0.5)


def test_the_newest_texts_up_to_the_limit_one_per_text(pool_store: Store):
    fill(pool_store, [(f"text {i}", "neutral", 0.9) for i in range(50)])
    fill(pool_store, [("text 3", "positive", 0.8)])  # a newer prediction of an old text
    fill(pool_store, [("other labels", "neutral", 0.9)], version=2)  # another label set
    pool = gather_pool(pool_store, LABELS, upto_id=51, policy=policy(limit=10))
    # The newest prediction of "text 3" (id 51) and the nine newest others, oldest first.
    assert pool.texts == [f"text {i}" for i in range(41, 50)] + ["text 3"]
    assert pool.logits[-1] == [2.0, 0.0, 0.0]
    assert pool.summary["selected"] == 10 and pool.summary["id_range"] == [42, 51]
    # A job's mark holds: rows stored after it was submitted are not its pool.
    pool = gather_pool(pool_store, LABELS, upto_id=50, policy=policy(limit=3))
    assert pool.texts == ["text 47", "text 48", "text 49"]
    everything = gather_pool(pool_store, LABELS, upto_id=52, policy=policy())
    assert len(everything.texts) == 50 and "other labels" not in everything.texts
    assert everything.summary["skipped"] == {"older_duplicate": 1}


def test_confidence_bounds_class_cap_and_held_out_gold(pool_store: Store):
    rows = [(f"neg {i}", "negative", 0.95) for i in range(30)]
    rows += [(f"pos {i}", "positive", 0.6) for i in range(5)]
    rows += [(f"neu {i}", "neutral", 0.3) for i in range(5)]
    fill(pool_store, rows)
    with pool_store.session() as s:
        gold.import_gold(s, [GoldItem("neg 29", "negative", "test")], "test")
    capped = gather_pool(pool_store, LABELS, 40, policy(limit=20, class_cap=0.5))
    # At most 10 per predicted label: the majority class does not swamp the pool.
    assert capped.summary["by_label"] == {"negative": 10, "neutral": 5, "positive": 5}
    assert "neg 29" not in capped.texts  # a gold test text never trains the candidate
    assert capped.summary["skipped"]["gold_dev_or_test"] == 1
    bounded = gather_pool(pool_store, LABELS, 40, policy(lo=0.5, hi=0.9))
    assert sorted(bounded.texts) == sorted(f"pos {i}" for i in range(5))
    with pytest.raises(JobError, match="no pseudo-labeled texts"):
        gather_pool(pool_store, LABELS, 40, policy(lo=0.99))


def test_the_pool_is_read_a_page_at_a_time(pool_store: Store, monkeypatch):
    """A job reads the pages its limit needs, not the store: its time and memory do not
    grow with the rows it leaves alone."""
    fill(pool_store, [(f"t {i}", "neutral", 0.9) for i in range(1000)])
    pages: list[int] = []
    real = pseudo_labels.pool_pages

    def counted(*args, **kwargs):
        for page in real(*args, **kwargs):
            pages.append(len(page))
            yield page

    monkeypatch.setattr(pipeline, "PAGE_SIZE", 50)
    monkeypatch.setattr(pseudo_labels, "pool_pages", counted)
    pool = gather_pool(pool_store, LABELS, 1000, policy(limit=120))
    assert len(pool.texts) == 120 and pages == [50, 50, 50]
    assert pool.summary["scanned"] == 120


def test_the_scan_stops_at_its_bound_when_the_policy_cannot_be_met(pool_store: Store):
    # One class only and a cap of 10% of the limit: the pool can never fill.
    fill(pool_store, [(f"t {i}", "neutral", 0.9) for i in range(400)])
    pool = gather_pool(pool_store, LABELS, 400, policy(limit=10, class_cap=0.1))
    assert pool.texts == ["t 399"]
    assert pool.summary["scanned"] == 200 and pool.summary["scan_limit_reached"] is True


def test_rows_below_the_retention_mark_are_never_used(pool_store: Store, monkeypatch):
    fill(pool_store, [(f"t {i}", "neutral", 0.9) for i in range(100)])
    one_second_apart(pool_store)
    with pool_store.session() as s:
        plan = retention.plan(s, retention_before(s, 30))
        assert plan.upto_id == 30 and plan.rows == 30
        retention.start_run(s, plan, archive=False)
    pool = gather_pool(pool_store, LABELS, 100, policy())
    assert len(pool.texts) == 70 and min(pool.summary["id_range"]) == 31

    # A run that starts while the job reads: the rows of its range that the job had
    # already read are dropped too, so the job never learns from a half-deleted range.
    real = pseudo_labels.pool_pages

    def run_starts_midway(*args, **kwargs):
        for n, page in enumerate(real(*args, **kwargs)):
            yield page
            if n == 0:
                with pool_store.session() as s:
                    retention.start_run(s, retention.plan(s, retention_before(s, 60)), False)

    monkeypatch.setattr(pipeline, "PAGE_SIZE", 20)
    monkeypatch.setattr(pseudo_labels, "pool_pages", run_starts_midway)
    pool = gather_pool(pool_store, LABELS, 100, policy())
    assert min(pool.summary["id_range"]) == 61 and len(pool.texts) == 40
    assert pool.summary["dropped_for_retention"] > 0


def one_second_apart(store: Store) -> None:
    """Stored times one second apart in id order (one insert gives its rows one time)."""
    from datetime import timedelta

    from app.store.tables import PseudoLabel

    with store.session() as s:
        for row in s.query(PseudoLabel):
            row.created_at = row.created_at + timedelta(seconds=row.id)


def retention_before(session, row_id: int):
    """The time of the row after `row_id`: a retention run before it removes ids <= row_id."""
    from app.store.tables import PseudoLabel

    return session.get(PseudoLabel, row_id + 1).created_at
