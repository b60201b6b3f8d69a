"""Answering the review queues: a label or a skip for one item (the API, `pfp review`, the
dashboard), or a file's answers all or none (Label Studio, CSV; app/store/review_files.py
reads them).

A label is given once: one UPDATE that only an unlabeled item matches, so of two people
answering at once the second is told (`AlreadyLabeled`). A skip means "not now": the item
leaves the open list and may still be labeled later. An uncertainty item's label joins the
gold train split in the same transaction; a disagreement's waits for the gate
(`reviews.release_to_gold`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.store import gold
from app.store.gold import text_digest
from app.store.reviews import (
    GOLD_SOURCE,
    LABELED,
    OPEN,
    SKIPPED,
    UNCERTAINTY,
    VIA,
    AlreadyLabeled,
    InvalidAnswer,
    ItemNotFound,
    UnknownClass,
    active_classes,
    check_queue,
    get_item,
)
from app.store.tables import ReviewItem, utcnow


@dataclass(frozen=True)
class Answer:
    """One answer read from a file: to the item `item_id`, else to the item of `text`.
    `label` None: the person skipped it (a cancelled Label Studio annotation)."""

    where: str  # how the file names it, for errors: "row 3", "task 12"
    item_id: int | None
    text: str | None
    label: str | None
    annotator: str | None = None


@dataclass(frozen=True)
class Imported:
    labeled: int
    skipped: int
    unchanged: int  # answers the store already had (a file imported twice)


def _check_via(via: str) -> None:
    if via not in VIA:
        raise ValueError(f"via must be one of {VIA}, not {via!r}")


def _check_class(label: str, classes: Sequence[str], where: str = "") -> None:
    if label not in classes:
        raise UnknownClass(
            f"{where}unknown class {label!r}: the active model's classes are {list(classes)}"
        )


def _already(item: ReviewItem, where: str = "") -> AlreadyLabeled:
    return AlreadyLabeled(
        f"{where}review item {item.id} is already labeled {item.label!r} "
        f"(via {item.labeled_via}); a label is given once"
    )


def _teach(session: Session, item: ReviewItem) -> None:
    """An uncertainty label joins the gold train split at once; a disagreement's waits for
    the gate (release_to_gold)."""
    if item.queue == UNCERTAINTY and item.label is not None:
        gold.import_gold(
            session, [gold.GoldItem(item.text, item.label, "train")], GOLD_SOURCE[UNCERTAINTY]
        )


def _set_label(
    session: Session, item: ReviewItem, label: str, via: str, annotator: str | None, where: str
) -> ReviewItem:
    # One UPDATE that only an unlabeled item matches: of two people answering at once, the
    # second finds nothing to update and is told the item is labeled.
    result = session.execute(
        update(ReviewItem)
        .where(ReviewItem.id == item.id, ReviewItem.status.in_((OPEN, SKIPPED)))
        .values(
            status=LABELED,
            label=label,
            labeled_via=via,
            annotator=annotator,
            labeled_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    session.refresh(item)
    if not getattr(result, "rowcount", 0):
        raise _already(item, where)
    _teach(session, item)
    return item


def label_item(
    session: Session, item_id: int, label: str, via: str, annotator: str | None = None
) -> ReviewItem:
    """Give item `item_id` its label; an uncertainty item's text joins gold train.

    Raises ItemNotFound, UnknownClass (not a class of the active model), AlreadyLabeled."""
    _check_via(via)
    item = get_item(session, item_id)
    if item.status == LABELED:
        raise _already(item)
    _check_class(label, active_classes(session))
    return _set_label(session, item, label, via, annotator, "")


def skip_item(session: Session, item_id: int, via: str, annotator: str | None = None) -> ReviewItem:
    """Take item `item_id` off the open list ("not now"); skipping twice is harmless.
    Raises ItemNotFound, AlreadyLabeled."""
    _check_via(via)
    item = get_item(session, item_id)
    session.execute(
        update(ReviewItem)
        .where(ReviewItem.id == item.id, ReviewItem.status == OPEN)
        .values(status=SKIPPED, labeled_via=via, annotator=annotator)
        .execution_options(synchronize_session=False)
    )
    session.refresh(item)
    if item.status == LABELED:
        raise _already(item)
    return item


def _item_for(session: Session, queue: str, answer: Answer) -> ReviewItem:
    """The item an answer is for: by id (whose text must then match), else by text (the
    newest unlabeled item of that text in the queue, else the newest of all)."""
    if answer.item_id is not None:
        item = session.get(ReviewItem, answer.item_id)
        if item is None or item.queue != queue:
            raise ItemNotFound(
                f"{answer.where}: no review item {answer.item_id} in the {queue} queue"
            )
        if answer.text is not None and text_digest(answer.text) != item.text_sha256:
            raise InvalidAnswer(
                f"{answer.where}: its text is not the text of review item {answer.item_id}"
            )
        return item
    assert answer.text is not None
    candidates = list(
        session.scalars(
            select(ReviewItem)
            .where(ReviewItem.queue == queue, ReviewItem.text_sha256 == text_digest(answer.text))
            .order_by(ReviewItem.id.desc())
        )
    )
    if not candidates:
        raise ItemNotFound(f"{answer.where}: its text is not in the {queue} queue")
    return next((c for c in candidates if c.status != LABELED), candidates[0])


def apply_answers(session: Session, queue: str, answers: Sequence[Answer], via: str) -> Imported:
    """Take a file's answers, all or none: every answer is checked (its item exists in the
    queue, its class is known, it does not contradict a label given before or another row)
    before anything is written, and the first that fails raises, naming its row.

    An answer that repeats a label the item already has is `unchanged` (a file imported
    twice changes nothing); a skip for an item that has a label or a skip is too."""
    _check_via(via)
    check_queue(queue)
    classes = active_classes(session) if any(a.label is not None for a in answers) else []
    planned: dict[int, tuple[Answer, ReviewItem]] = {}
    unchanged = 0
    for answer in answers:
        if answer.label is not None:
            _check_class(answer.label, classes, f"{answer.where}: ")
        item = _item_for(session, queue, answer)
        earlier = planned.get(item.id)
        if earlier is not None:
            first = earlier[0]
            if first.label != answer.label and answer.label is not None:
                if first.label is None:  # a label after a skip of the same item: the label wins
                    planned[item.id] = (answer, item)
                    continue
                raise InvalidAnswer(
                    f"{first.where} and {answer.where} give review item {item.id} two "
                    f"different labels ({first.label!r}, {answer.label!r})"
                )
            unchanged += 1
            continue
        if item.status == LABELED:
            if answer.label is not None and answer.label != item.label:
                raise _already(item, f"{answer.where}: ")
            unchanged += 1
            continue
        if answer.label is None and item.status == SKIPPED:
            unchanged += 1
            continue
        planned[item.id] = (answer, item)
    labeled = skipped = 0
    for answer, item in planned.values():
        if answer.label is None:
            skip_item(session, item.id, via, answer.annotator)
            skipped += 1
        else:
            _set_label(session, item, answer.label, via, answer.annotator, f"{answer.where}: ")
            labeled += 1
    return Imported(labeled=labeled, skipped=skipped, unchanged=unchanged)
