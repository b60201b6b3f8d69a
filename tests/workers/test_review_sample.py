"""What a job holds back from its pool to judge its candidate on (workers/pipeline.py
review_sample): the newest stored traffic, not gold, stored after the champion's pool,
at most half of the traffic it could learn from; and the pool never holds it. On SQLite
and PostgreSQL."""

from __future__ import annotations

import pytest

from app.ml.job_params import PoolParams
from app.ml.pool import PoolPolicy
from app.store import gold, pseudo_labels, versions
from app.store.database import Store
from app.store.gold import GoldItem
from app.store.pseudo_labels import Prediction
from workers.pipeline import current_champion, gather_pool, review_sample

LABELS = ["negative", "neutral", "positive"]


def fill(store: Store, texts: list[str]) -> None:
    with store.session() as s:
        pseudo_labels.insert_predictions(
            s, [Prediction(text, "neutral", 0.9, [0.0, 1.0, 0.0], 1) for text in texts]
        )


def serve(store: Store, lineage: dict) -> None:
    """A version with LABELS and `lineage` becomes the champion."""
    with store.session() as s:
        row = versions.create_version(
            s,
            labels=LABELS,
            parent_version=None,
            job_id=None,
            metrics={},
            lineage=lineage,
            decision="published",
        )
        versions.activate(s, row.version, "test")


@pytest.fixture
def traffic(any_store: Store) -> Store:
    serve(any_store, {"kind": "bootstrap"})
    fill(any_store, [f"text {i}" for i in range(50)])  # ids 1..50
    return any_store


def test_the_newest_traffic_is_held_back_and_never_pooled(traffic: Store):
    with traffic.session() as s:
        gold.import_gold(s, [GoldItem("text 49", "neutral", "train")], "test")
    fill(traffic, ["text 3"])  # id 51: an old text stored again is new traffic
    sample = review_sample(traffic, 10, upto_id=51)
    # Gold (of any split) is never asked about again; a text keeps its newest prediction.
    assert sample.rows[:2] == [(51, "text 3"), (49, "text 48")]
    assert sample.texts == ["text 3"] + [f"text {i}" for i in range(48, 39, -1)]
    pool = gather_pool(traffic, LABELS, 51, PoolPolicy(PoolParams(), 0), withheld=sample.texts)
    assert not set(pool.texts) & set(sample.texts)
    # Gold train is not held out of a pool (it trains anyway): 50 texts less the sample's.
    assert len(pool.texts) == 40 and "text 49" in pool.texts
    assert pool.summary["skipped"]["review_sample"] == 10
    # The job's mark holds: traffic stored after the job was submitted is not its sample.
    assert review_sample(traffic, 3, upto_id=20).texts == ["text 19", "text 18", "text 17"]


def test_at_most_half_the_traffic_is_held_back(traffic: Store):
    """A first job over little traffic keeps half of it to learn from."""
    sample = review_sample(traffic, 3000, upto_id=50)
    assert len(sample.rows) == 25 and sample.seen == 50
    assert sample.texts == [f"text {i}" for i in range(49, 24, -1)]
    pool = gather_pool(traffic, LABELS, 50, PoolPolicy(PoolParams(), 0), withheld=sample.texts)
    assert sorted(pool.texts) == sorted(f"text {i}" for i in range(25))
    # A sample longer than the scan's bound (20 rows a text of the limit) does not end the
    # scan before the pool has a text.
    one = gather_pool(traffic, LABELS, 50, PoolPolicy(PoolParams(), 1), withheld=sample.texts)
    assert one.texts == ["text 24"] and one.summary["scan_limit_reached"] is False
    assert review_sample(traffic, 0, upto_id=50).rows == []


def test_only_texts_the_champion_did_not_learn_from(traffic: Store):
    """A champion whose pool reached id 45 learned from any text stored up to there: only
    the five stored after it can judge it against a candidate."""
    serve(traffic, {"kind": "retrain", "pool": {"upto_id": 45, "selected": 45}})
    champion = current_champion(traffic)
    assert champion is not None and champion.pool_upto == 45
    sample = review_sample(traffic, 20, upto_id=50, above_id=champion.pool_upto)
    assert sample.texts == [f"text {i}" for i in range(49, 44, -1)]
    assert sample.summary() == {"texts": 5, "asked": 20, "traffic_seen": 40, "above_id": 45}


def test_a_first_model_learned_from_no_traffic(traffic: Store):
    champion = current_champion(traffic)
    assert champion is not None and champion.pool_upto == 0
