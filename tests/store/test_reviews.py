"""The review queues in the store, on SQLite and PostgreSQL: dedup, order, one label per
item, skips, what teaches at once (uncertainty) and what waits for the gate
(disagreement), and file answers taken all or none."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.store import gold, review_answers, reviews, versions
from app.store.database import Store
from app.store.review_answers import Answer
from app.store.reviews import Disagreement, Uncertain
from app.store.tables import GoldExample, ReviewItem
from tests.conftest import LABELS


def _activate(store: Store, labels: list[str] = LABELS) -> int:
    with store.session() as session:
        row = versions.create_version(
            session,
            labels=labels,
            parent_version=None,
            job_id=None,
            metrics={},
            lineage={},
            decision="published",
        )
        versions.activate(session, row.version, "test")
        return row.version


def _uncertain(text: str, priority: float, label: str = "neutral", row_id: int = 1) -> Uncertain:
    return Uncertain(text, row_id, 1, label, "margin", 1.0 - priority, priority)


def _one_uncertain(store: Store, text: str) -> int:
    """An active model and one open uncertainty item; its id."""
    _activate(store)
    with store.session() as session:
        reviews.add_uncertain(session, [_uncertain(text, 0.9)])
        [item] = reviews.list_items(session, "uncertainty")
        return item.id


def _gold(store: Store) -> list[tuple[str, str, str, str]]:
    with store.session() as session:
        rows = session.execute(
            select(GoldExample.text, GoldExample.label, GoldExample.split, GoldExample.source)
        ).all()
    return sorted(tuple(r) for r in rows)  # type: ignore[misc]


def _disagree(store: Store, job_id: str, texts: list[str]) -> reviews.Added:
    with store.session() as session:
        return reviews.add_disagreements(
            session,
            job_id,
            candidate_version=2,
            champion_version=1,
            disagreements=[Disagreement(t, "positive", "negative", i) for i, t in enumerate(texts)],
        )


def test_disagreements_are_queued_once_per_job_and_never_for_gold(any_store: Store):
    with any_store.session() as session:
        gold.import_gold(session, [gold.GoldItem("known", "neutral", "test")], source="api")
    added = _disagree(any_store, "job-a", ["a", "b", "a", "known"])
    assert (added.added, added.already_queued, added.already_gold) == (2, 0, 1)
    # The job's shadow scoring run again adds nothing; another job asks again.
    again = _disagree(any_store, "job-a", ["a", "b", "c"])
    assert (again.added, again.already_queued) == (1, 2)
    assert _disagree(any_store, "job-b", ["a"]).added == 1
    with any_store.session() as session:
        items = reviews.list_items(session, "disagreement", job_id="job-a")
        assert [i.text for i in items] == ["a", "b", "c"]  # in the order found
        first = items[0]
        assert (first.candidate_version, first.candidate_label) == (2, "positive")
        assert (first.champion_version, first.champion_label) == (1, "negative")
        assert first.pseudo_label_id == 0 and first.status == "open"
        assert reviews.count_items(session, "disagreement") == 4
        assert reviews.counts(session, job_id="job-b")["disagreement"] == {
            "open": 1,
            "labeled": 0,
            "skipped": 0,
        }


def test_uncertain_texts_are_served_most_uncertain_first_and_queued_once(any_store: Store):
    with any_store.session() as session:
        added = reviews.add_uncertain(
            session,
            [_uncertain("low", 0.2), _uncertain("high", 0.9), _uncertain("mid", 0.5)],
        )
        assert added.added == 3
    _disagree(any_store, "job-a", ["in another queue"])
    with any_store.session() as session:
        again = reviews.add_uncertain(
            session, [_uncertain("high", 0.99), _uncertain("in another queue", 0.99)]
        )
        assert (again.added, again.already_queued) == (0, 2)
        page = reviews.list_items(session, "uncertainty", limit=2)
        assert [i.text for i in page] == ["high", "mid"]
        rest = reviews.list_items(session, "uncertainty", offset=2, limit=2)
        assert [i.text for i in rest] == ["low"]


def test_the_database_refuses_a_second_item_for_one_text(any_store: Store):
    """The dedup rules hold in the schema too, not only in the functions above."""
    from sqlalchemy.exc import IntegrityError

    def insert(**values: object) -> None:
        with any_store.session() as session:
            session.add(ReviewItem(text="t", text_sha256="d" * 64, **values))

    insert(queue="uncertainty")
    with pytest.raises(IntegrityError):
        insert(queue="uncertainty", status="labeled")
    insert(queue="disagreement", job_id="a")
    insert(queue="disagreement", job_id="b")
    with pytest.raises(IntegrityError):
        insert(queue="disagreement", job_id="a")


def test_an_uncertainty_label_joins_gold_train_at_once(any_store: Store):
    item_id = _one_uncertain(any_store, "@united is this gate 12?")
    with any_store.session() as session:
        labeled = review_answers.label_item(session, item_id, "neutral", "cli", annotator="ana")
        assert (labeled.status, labeled.label, labeled.labeled_via) == ("labeled", "neutral", "cli")
        assert labeled.annotator == "ana" and labeled.labeled_at is not None
    assert _gold(any_store) == [
        ("@united is this gate 12?", "neutral", "train", "review:uncertainty")
    ]
    with any_store.session() as session:
        assert reviews.counts(session)["uncertainty"] == {"open": 0, "labeled": 1, "skipped": 0}


def test_a_disagreement_label_waits_for_the_gate_then_teaches(any_store: Store):
    _activate(any_store)
    _disagree(any_store, "job-a", ["one", "two", "three"])
    _disagree(any_store, "job-b", ["four"])
    with any_store.session() as session:
        ids = [i.id for i in reviews.list_items(session, "disagreement", job_id="job-a")]
        review_answers.label_item(session, ids[0], "positive", "api")
        review_answers.label_item(session, ids[2], "negative", "dashboard")
        review_answers.skip_item(session, ids[1], "api")
        [four] = reviews.list_items(session, "disagreement", job_id="job-b")
        review_answers.label_item(session, four.id, "neutral", "api")
    assert _gold(any_store) == []  # nothing teaches before the decision
    with any_store.session() as session:
        judged = reviews.labeled_disagreements(session, "job-a")
    assert [(d.text, d.label, d.candidate_label, d.champion_label) for d in judged] == [
        ("one", "positive", "positive", "negative"),
        ("three", "negative", "positive", "negative"),
    ]
    with any_store.session() as session:
        assert reviews.release_to_gold(session, "job-a") == (2, 0)
    with any_store.session() as session:
        assert reviews.release_to_gold(session, "job-a") == (0, 2)  # again: nothing new
    assert _gold(any_store) == [
        ("one", "positive", "train", "review:disagreement"),
        ("three", "negative", "train", "review:disagreement"),
    ]


def test_bad_labels_are_refused_and_change_nothing(any_store: Store):
    item_id = _one_uncertain(any_store, "t")
    with (
        pytest.raises(reviews.UnknownClass, match="'sarcastic'.*classes are"),
        any_store.session() as session,
    ):
        review_answers.label_item(session, item_id, "sarcastic", "api")
    with pytest.raises(reviews.ItemNotFound), any_store.session() as session:
        review_answers.label_item(session, item_id + 100, "neutral", "api")
    with any_store.session() as session:
        assert reviews.get_item(session, item_id).status == "open"
        review_answers.label_item(session, item_id, "neutral", "api")
    with (
        pytest.raises(reviews.AlreadyLabeled, match="already labeled 'neutral'"),
        any_store.session() as session,
    ):
        review_answers.label_item(session, item_id, "positive", "api")
    with pytest.raises(reviews.AlreadyLabeled), any_store.session() as session:
        review_answers.skip_item(session, item_id, "api")
    with any_store.session() as session:
        item = reviews.get_item(session, item_id)
        assert (item.status, item.label) == ("labeled", "neutral")
    assert [g[1] for g in _gold(any_store)] == ["neutral"]


def test_before_the_first_model_there_are_no_classes(any_store: Store):
    with any_store.session() as session:
        reviews.add_uncertain(session, [_uncertain("t", 0.9)])
        [item] = reviews.list_items(session, "uncertainty")
        with pytest.raises(reviews.NoClasses):
            review_answers.label_item(session, item.id, "neutral", "api")


def test_a_skipped_item_leaves_the_open_list_and_may_still_be_labeled(any_store: Store):
    _activate(any_store)
    with any_store.session() as session:
        reviews.add_uncertain(session, [_uncertain("a", 0.9), _uncertain("b", 0.8)])
        first = reviews.list_items(session, "uncertainty")[0]
        skipped = review_answers.skip_item(session, first.id, "cli")
        assert skipped.status == "skipped"
        assert review_answers.skip_item(session, first.id, "cli").status == "skipped"  # harmless
        assert [i.text for i in reviews.list_items(session, "uncertainty")] == ["b"]
        assert [i.text for i in reviews.list_items(session, "uncertainty", status="skipped")] == [
            "a"
        ]
        labeled = review_answers.label_item(session, first.id, "positive", "labelstudio")
        assert (labeled.status, labeled.label) == ("labeled", "positive")


def test_of_two_people_answering_at_once_the_second_is_told(any_store: Store):
    _activate(any_store)
    with any_store.session() as session:
        reviews.add_uncertain(session, [_uncertain("t", 0.9)])
    with any_store.session() as first:
        seen = reviews.list_items(first, "uncertainty")[0]  # read while still open
        with any_store.session() as second:
            review_answers.label_item(second, seen.id, "negative", "dashboard")
        assert seen.status == "open"
        with pytest.raises(reviews.AlreadyLabeled, match="'negative'"):
            review_answers._set_label(first, seen, "positive", "cli", None, "")
    with any_store.session() as session:
        assert reviews.get_item(session, seen.id).label == "negative"


def test_file_answers_are_taken_all_or_none(any_store: Store):
    _activate(any_store)
    with any_store.session() as session:
        reviews.add_uncertain(
            session, [_uncertain(t, 0.9 - i / 10) for i, t in enumerate(["a", "b", "c", "d"])]
        )
        ids = {i.text: i.id for i in reviews.list_items(session, "uncertainty")}

    def apply(answers: list[Answer]) -> review_answers.Imported:
        with any_store.session() as session:
            return review_answers.apply_answers(session, "uncertainty", answers, "csv")

    good = [
        Answer("row 1", ids["a"], "a", "positive"),
        Answer("row 2", None, "b", "negative", annotator="7"),  # by its text
        Answer("row 3", ids["c"], None, None),  # a skip
    ]
    for bad, error, message in [
        (Answer("row 4", ids["d"], None, "sarcastic"), reviews.UnknownClass, "row 4: unknown"),
        (Answer("row 4", 9999, None, "neutral"), reviews.ItemNotFound, "row 4: no review item"),
        (Answer("row 4", None, "zzz", "neutral"), reviews.ItemNotFound, "row 4: its text"),
        (Answer("row 4", ids["d"], "not d", "neutral"), reviews.InvalidAnswer, "row 4: its text"),
        (Answer("row 4", ids["a"], None, "neutral"), reviews.InvalidAnswer, "row 1 and row 4"),
    ]:
        with pytest.raises(error, match=message):
            apply([*good, bad])
        with any_store.session() as session:
            assert reviews.counts(session)["uncertainty"]["open"] == 4, bad
        assert _gold(any_store) == []

    assert apply(good) == review_answers.Imported(labeled=2, skipped=1, unchanged=0)
    with any_store.session() as session:
        b = reviews.get_item(session, ids["b"])
        assert (b.label, b.labeled_via, b.annotator) == ("negative", "csv", "7")
    # The same file again changes nothing; a different label for a labeled item is refused.
    assert apply(good) == review_answers.Imported(labeled=0, skipped=0, unchanged=3)
    with pytest.raises(reviews.AlreadyLabeled, match="row 9: review item"):
        apply([Answer("row 9", ids["a"], None, "neutral")])
    # A label for the skipped item is taken.
    assert apply([Answer("row 1", ids["c"], "c", "neutral")]).labeled == 1
    assert [g[0] for g in _gold(any_store)] == ["a", "b", "c"]


def test_answers_by_text_in_the_disagreement_queue_go_to_the_newest_open_item(any_store: Store):
    _activate(any_store)
    _disagree(any_store, "job-a", ["same text"])
    _disagree(any_store, "job-b", ["same text"])
    with any_store.session() as session:
        result = review_answers.apply_answers(
            session, "disagreement", [Answer("task 1", None, "same text", "neutral")], "labelstudio"
        )
        assert result.labeled == 1
        assert [d.text for d in reviews.labeled_disagreements(session, "job-b")] == ["same text"]
        assert reviews.labeled_disagreements(session, "job-a") == []


def test_unknown_queues_and_statuses_are_refused(any_store: Store):
    with any_store.session() as session:
        with pytest.raises(reviews.UnknownQueue, match="the queues are disagreement, uncertainty"):
            reviews.list_items(session, "gold")
        with pytest.raises(reviews.ReviewError, match="no status 'done'"):
            reviews.count_items(session, "uncertainty", status="done")
