"""The uncertainty queue's choice: margin and entropy, spread over the predicted classes,
each text once, never a gold text nor one ever queued, from the newest stored rows."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from app.store import gold, pseudo_labels, retention, reviews, uncertainty
from app.store.database import Store
from app.store.pseudo_labels import Prediction
from app.store.uncertainty import StoredPrediction, select_uncertain
from tests.conftest import LABELS
from tests.store.test_reviews import _activate


def _logits(*probs: float) -> list[float]:
    return [math.log(p) for p in probs]


def _row(row_id: int, text: str, *probs: float) -> StoredPrediction:
    return StoredPrediction(row_id, text, _logits(*probs), LABELS, 1)


def test_margin_and_entropy():
    probs = uncertainty.probabilities(_logits(0.5, 0.3, 0.2))
    assert probs == pytest.approx([0.5, 0.3, 0.2])
    assert uncertainty.uncertainty(probs, "margin") == pytest.approx((0.2, 0.8))
    uniform = [1 / 3] * 3
    assert uncertainty.uncertainty(uniform, "entropy") == pytest.approx((math.log(3), 1.0))
    assert uncertainty.uncertainty([1.0, 0.0, 0.0], "entropy") == pytest.approx((0.0, 0.0))
    assert uncertainty.probabilities([1000.0, 0.0]) == pytest.approx([1.0, 0.0])  # no overflow
    with pytest.raises(ValueError, match="margin"):
        uncertainty.uncertainty(probs, "variance")  # type: ignore[arg-type]


def test_margin_and_entropy_rank_differently():
    # A: two classes tied (margin 0); B: three nearly tied (higher entropy, margin 0.1).
    rows = [_row(1, "A", 0.45, 0.45, 0.10), _row(2, "B", 0.4, 0.3, 0.3)]
    assert [u.text for u in select_uncertain(rows, 1, "margin")] == ["A"]
    assert [u.text for u in select_uncertain(rows, 1, "entropy")] == ["B"]
    [b] = select_uncertain(rows[1:], 1, "entropy")
    assert b.score_kind == "entropy" and b.predicted_label == "negative"


def test_one_class_cannot_fill_the_queue():
    # Ten texts the model hesitates on, all predicted negative; two more certain ones of
    # each other class.
    rows = [_row(i, f"neg {i}", 0.36, 0.34, 0.30) for i in range(10)]
    rows += [_row(20 + i, f"pos {i}", 0.2, 0.1, 0.7) for i in range(2)]
    rows += [_row(30 + i, f"neu {i}", 0.1, 0.8, 0.1) for i in range(2)]
    chosen = select_uncertain(rows, 6, "margin")
    assert (
        sorted(u.predicted_label for u in chosen)
        == ["negative"] * 2 + ["neutral"] * 2 + ["positive"] * 2
    )
    # Within a class the most uncertain go first; past the other classes' texts, the rest.
    assert len(select_uncertain(rows, 14, "margin")) == 14
    assert [u.predicted_label for u in select_uncertain(rows, 100, "margin")][-1] == "negative"


def test_each_text_once_at_its_most_uncertain():
    rows = [_row(1, "same", 0.9, 0.05, 0.05), _row(2, "same", 0.5, 0.45, 0.05)]
    [only] = select_uncertain(rows, 5, "margin")
    assert only.pseudo_label_id == 2 and only.score == pytest.approx(0.05)


def test_logits_of_another_label_set_are_left_out():
    odd = StoredPrediction(1, "two classes", [0.0, 0.0], LABELS, 1)
    assert select_uncertain([odd], 5, "margin") == []


def _store(store: Store, rows: list[tuple[str, list[float], int]]) -> list[int]:
    with store.session() as session:
        made = pseudo_labels.add_predictions(
            session,
            [Prediction(text, "x", max(probs), _logits(*probs), v) for text, probs, v in rows],
        )
        return [r.id for r in made]


def test_fill_never_takes_gold_nor_queued_texts_and_scans_only_the_newest(any_store: Store):
    version = _activate(any_store)
    unsure = [0.34, 0.33, 0.33]
    ids = _store(any_store, [("oldest, most unsure", [0.333, 0.334, 0.333], version)])
    ids += _store(
        any_store,
        [
            ("gold train", unsure, version),
            ("gold dev", unsure, version),
            ("gold test", unsure, version),
            ("a disagreement", unsure, version),
            ("sure", [0.98, 0.01, 0.01], version),
            ("unsure", [0.4, 0.35, 0.25], version),
            ("unsure", [0.4, 0.35, 0.25], version),  # sent twice
        ],
    )
    with any_store.session() as session:
        gold.import_gold(
            session,
            [gold.GoldItem(f"gold {s}", "neutral", s) for s in ("train", "dev", "test")],
            source="api",
        )
        reviews.add_disagreements(
            session, "job-a", 2, 1, [reviews.Disagreement("a disagreement", "positive", "negative")]
        )
    with any_store.session() as session:
        filled = uncertainty.fill_uncertainty(session, size=10, by="margin", scan=len(ids) - 1)
        assert (filled.scanned, filled.eligible, filled.added) == (7, 2, 2)
        queued = reviews.list_items(session, "uncertainty")
        assert [i.text for i in queued] == ["unsure", "sure"]
        assert queued[0].pseudo_label_id == ids[-1] and queued[0].model_version == version
        assert queued[0].score_kind == "margin" and queued[0].score == pytest.approx(0.05)
    with any_store.session() as session:  # the same rows again: nothing new to ask
        assert uncertainty.fill_uncertainty(session, size=10, scan=100).added == 1  # the oldest


def test_fill_reads_only_models_with_the_active_classes_above_the_retention_mark(
    any_store: Store,
):
    _activate(any_store, ["no", "yes"])
    version = _activate(any_store)
    [old] = _store(any_store, [("below the mark", [0.34, 0.33, 0.33], version)])
    _store(any_store, [("two-class model", [0.5, 0.5], version - 1)])
    _store(any_store, [("kept", [0.34, 0.33, 0.33], version)])
    with any_store.session() as session:
        # A retention run recorded over the oldest row: it is being removed.
        plan = retention.Plan(datetime.now(UTC), upto_id=old, rows=1, oldest=None, newest=None)
        retention.start_run(session, plan, archive=False)
    with any_store.session() as session:
        filled = uncertainty.fill_uncertainty(session, size=10)
        assert filled.scanned == 1
        assert [i.text for i in reviews.list_items(session, "uncertainty")] == ["kept"]


def test_fill_before_the_first_model_is_refused(any_store: Store):
    with any_store.session() as session:
        with pytest.raises(reviews.NoClasses):
            uncertainty.fill_uncertainty(session, size=5)
        with pytest.raises(ValueError, match="score must be"):
            uncertainty.fill_uncertainty(session, size=5, by="variance")  # type: ignore[arg-type]
