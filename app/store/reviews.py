"""Review queues: texts waiting for a person's label, what the queues hold, and what the
gate reads of the answers (giving the answers: app/store/review_answers.py).

Two queues share one table (`ReviewItem`):

- `disagreement`: texts where a job's candidate and its champion answer differently. Their
  labels judge the candidate (the gate reads `labeled_disagreements`), and only then teach:
  `release_to_gold` moves them to the gold train split after the decision.
- `uncertainty`: stored texts the serving model was least sure of (app/store/uncertainty.py
  picks them). A label joins the gold train split at once.

An item is `open` until a person labels or skips it. A skip means "not now": the item
leaves the open list, and a label that comes for it later (an import, another person) is
still taken. Once the gate has decided a job, its open disagreements are skipped too
(`close_open`). A second label never is: `AlreadyLabeled`. A text is queued once per queue,
and once per job in the disagreement queue, whatever became of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.store import gold, versions
from app.store.gold import text_digest
from app.store.tables import GoldExample, ReviewItem, utcnow

DISAGREEMENT = "disagreement"
UNCERTAINTY = "uncertainty"
QUEUES = (DISAGREEMENT, UNCERTAINTY)
OPEN, LABELED, SKIPPED = "open", "labeled", "skipped"
STATUSES = (OPEN, LABELED, SKIPPED)
# How an answer came: the REST API, `pfp review`, the dashboard, or a file imported.
VIA = ("api", "cli", "dashboard", "labelstudio", "csv")
GOLD_SOURCE = {UNCERTAINTY: "review:uncertainty", DISAGREEMENT: "review:disagreement"}

_IN_CHUNK = 500  # digests per IN (...) query


class ReviewError(Exception):
    """A request about the review queues that cannot be done; nothing was written."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownQueue(ReviewError):
    pass


class ItemNotFound(ReviewError):
    """No such item, or not in the queue asked about."""


class AlreadyLabeled(ReviewError):
    """The item has its label; a label is given once."""


class InvalidAnswer(ReviewError):
    """An answer that cannot be taken as it is (a text that is not the item's, say)."""


class UnknownClass(InvalidAnswer):
    """A label that is not one of the active model's classes."""


class NoClasses(ReviewError):
    """No model is active yet, so there are no classes to label with."""


@dataclass(frozen=True)
class Disagreement:
    """A text the candidate and the champion label differently."""

    text: str
    candidate_label: str
    champion_label: str
    pseudo_label_id: int | None = None


@dataclass(frozen=True)
class Uncertain:
    """A stored text the model that labeled it was unsure of (app/store/uncertainty.py)."""

    text: str
    pseudo_label_id: int
    model_version: int
    predicted_label: str
    score_kind: str
    score: float
    priority: float


@dataclass(frozen=True)
class Added:
    added: int
    already_queued: int  # the text was in the queue before (for this job), any status
    already_gold: int  # the text is gold already: its label is known


@dataclass(frozen=True)
class LabeledDisagreement:
    """What the gate reads: a person's label beside the two models' answers."""

    item_id: int
    text: str
    label: str
    candidate_label: str
    champion_label: str


def check_queue(queue: str) -> str:
    if queue not in QUEUES:
        raise UnknownQueue(f"no review queue {queue!r}; the queues are {', '.join(QUEUES)}")
    return queue


def active_classes(session: Session) -> list[str]:
    """The active model's labels: the classes a person may answer with."""
    active = versions.active_version(session)
    row = versions.get_version(session, active) if active is not None else None
    if row is None:
        raise NoClasses("no model is active yet, so there are no classes to label with")
    return list(row.labels)


# --- filling the queues ----------------------------------------------------------------------


def _existing(session: Session, column: Any, digests: Iterable[str], *where: Any) -> set[str]:
    found: set[str] = set()
    wanted = list(set(digests))
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start : start + _IN_CHUNK]
        found.update(session.scalars(select(column).where(column.in_(chunk), *where)))
    return found


def gold_digests(session: Session, digests: Iterable[str]) -> set[str]:
    """Which of `digests` are texts of gold examples (any split)."""
    return _existing(session, GoldExample.text_sha256, digests)


def queued_digests(session: Session, digests: Iterable[str], *where: Any) -> set[str]:
    """Which of `digests` are texts of review items (any queue, any status, unless `where`)."""
    return _existing(session, ReviewItem.text_sha256, digests, *where)


def _insert_new(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert rows, leaving out any that the dedup indexes refuse (another process may
    have queued the same text a moment ago); how many went in."""
    if not rows:
        return 0
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    now = utcnow()
    statement = dialect.insert(ReviewItem).on_conflict_do_nothing().returning(ReviewItem.id)
    ids = session.execute(statement, [{**r, "status": OPEN, "created_at": now} for r in rows])
    return len(list(ids.scalars()))


def add_disagreements(
    session: Session,
    job_id: str,
    candidate_version: int,
    champion_version: int,
    disagreements: Iterable[Disagreement],
) -> Added:
    """Queue the texts where job `job_id`'s candidate and champion disagree.

    Idempotent: a text already queued for this job (whatever its status) is left as it is,
    so a job that runs its shadow scoring again adds nothing twice. Texts that are gold
    already are left out: their label is known, and a model may have trained on them."""
    unique: dict[str, Disagreement] = {}
    for d in disagreements:
        unique.setdefault(text_digest(d.text), d)
    known_gold = gold_digests(session, unique)
    queued = queued_digests(
        session, unique, ReviewItem.queue == DISAGREEMENT, ReviewItem.job_id == job_id
    )
    rows = [
        {
            "queue": DISAGREEMENT,
            "text": d.text,
            "text_sha256": digest,
            "pseudo_label_id": d.pseudo_label_id,
            "job_id": job_id,
            "candidate_version": candidate_version,
            "candidate_label": d.candidate_label,
            "champion_version": champion_version,
            "champion_label": d.champion_label,
        }
        for digest, d in unique.items()
        if digest not in known_gold and digest not in queued
    ]
    added = _insert_new(session, rows)
    return Added(added, len(unique) - len(known_gold) - added, len(known_gold))


def add_uncertain(session: Session, items: Iterable[Uncertain]) -> Added:
    """Queue uncertain texts; a text ever queued in any queue, or gold, is left out."""
    unique: dict[str, Uncertain] = {}
    for u in items:
        unique.setdefault(text_digest(u.text), u)
    known_gold = gold_digests(session, unique)
    queued = queued_digests(session, unique)
    rows = [
        {
            "queue": UNCERTAINTY,
            "text": u.text,
            "text_sha256": digest,
            "pseudo_label_id": u.pseudo_label_id,
            "model_version": u.model_version,
            "predicted_label": u.predicted_label,
            "score_kind": u.score_kind,
            "score": u.score,
            "priority": u.priority,
        }
        for digest, u in unique.items()
        if digest not in known_gold and digest not in queued
    ]
    added = _insert_new(session, rows)
    return Added(added, len(unique) - len(known_gold) - added, len(known_gold))


# --- reading them ----------------------------------------------------------------------------


def _in_queue(queue: str, status: str | None, job_id: str | None) -> list[Any]:
    where: list[Any] = [ReviewItem.queue == check_queue(queue)]
    if status is not None:
        if status not in STATUSES:
            raise ReviewError(f"no status {status!r}; the statuses are {', '.join(STATUSES)}")
        where.append(ReviewItem.status == status)
    if job_id is not None:
        where.append(ReviewItem.job_id == job_id)
    return where


def list_items(
    session: Session,
    queue: str,
    *,
    status: str | None = OPEN,
    job_id: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> list[ReviewItem]:
    """A page of a queue in the order a person should answer it: uncertainty items most
    uncertain first, disagreements in the order they were found (oldest job first)."""
    query = select(ReviewItem).where(*_in_queue(queue, status, job_id))
    if queue == UNCERTAINTY:
        query = query.order_by(ReviewItem.priority.desc(), ReviewItem.id)
    else:
        query = query.order_by(ReviewItem.id)
    return list(session.scalars(query.offset(offset).limit(limit)))


def count_items(
    session: Session, queue: str, *, status: str | None = OPEN, job_id: str | None = None
) -> int:
    query = select(func.count()).select_from(ReviewItem)
    return session.scalar(query.where(*_in_queue(queue, status, job_id))) or 0


def counts(session: Session, job_id: str | None = None) -> dict[str, dict[str, int]]:
    """Items per queue and status (every queue and status present, zeros included); with
    `job_id`, only that job's disagreements."""
    query = select(ReviewItem.queue, ReviewItem.status, func.count()).group_by(
        ReviewItem.queue, ReviewItem.status
    )
    if job_id is not None:
        query = query.where(ReviewItem.job_id == job_id)
    table = {queue: dict.fromkeys(STATUSES, 0) for queue in QUEUES}
    for queue, status, n in session.execute(query).all():
        table.setdefault(queue, dict.fromkeys(STATUSES, 0))[status] = n
    return table


def get_item(session: Session, item_id: int, queue: str | None = None) -> ReviewItem:
    item = session.get(ReviewItem, item_id)
    if item is None or (queue is not None and item.queue != queue):
        where = f" in the {queue} queue" if queue else ""
        raise ItemNotFound(f"no review item {item_id}{where}")
    return item


def labeled_disagreements(session: Session, job_id: str) -> list[LabeledDisagreement]:
    """The labeled disagreements of job `job_id`, in the order they were found."""
    rows = session.scalars(
        select(ReviewItem)
        .where(
            ReviewItem.queue == DISAGREEMENT,
            ReviewItem.job_id == job_id,
            ReviewItem.status == LABELED,
        )
        .order_by(ReviewItem.id)
    )
    return [
        LabeledDisagreement(
            item_id=r.id,
            text=r.text,
            label=r.label or "",
            candidate_label=r.candidate_label or "",
            champion_label=r.champion_label or "",
        )
        for r in rows
    ]


def release_to_gold(session: Session, job_id: str) -> tuple[int, int]:
    """After the gate's decision on job `job_id`: its labeled disagreements join the gold
    train split (source `review:disagreement`). Safe to call again: texts already gold are
    skipped. Returns (inserted, skipped) as gold.import_gold does."""
    items = [
        gold.GoldItem(d.text, d.label, "train") for d in labeled_disagreements(session, job_id)
    ]
    return gold.import_gold(session, items, GOLD_SOURCE[DISAGREEMENT])


def close_open(session: Session, job_id: str) -> int:
    """After the gate's decision on job `job_id`: its disagreements nobody answered leave
    the open list (skipped), so people are not asked about a decided candidate. A label
    that still comes for one is taken and, once `release_to_gold` runs again, teaches.
    Returns how many were open."""
    result = session.execute(
        update(ReviewItem)
        .where(
            ReviewItem.queue == DISAGREEMENT,
            ReviewItem.job_id == job_id,
            ReviewItem.status == OPEN,
        )
        .values(status=SKIPPED)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
