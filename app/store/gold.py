"""Human-labeled (gold) examples and their splits.

- `train`: what candidates are fine-tuned on;
- `dev`: what picks checkpoints (the best fine-tuning step, a teacher's, a serving form);
- `gate`: what the promotion gate judges candidate and champion on, and nothing else: no
  model is trained or selected on it, so it is free of the bias of texts a model was
  picked with (workers/gate.py);
- `test`: reported beside the others, never read by a decision.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.store.tables import GoldExample

# `gate` last: splits stored before it existed keep their positions.
SPLITS = ("train", "dev", "test", "gate")


@dataclass(frozen=True)
class GoldItem:
    text: str
    label: str
    split: str


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_for(
    text: str, dev_fraction: float = 0.1, test_fraction: float = 0.1, gate_fraction: float = 0.1
) -> str:
    """A stable split from the text's digest: the same text always lands in the same split
    (70/10/10/10 train/dev/gate/test; a text's test or dev bucket is the one it had before
    the gate split existed)."""
    bucket = int(text_digest(text)[:8], 16) / 0xFFFFFFFF
    if bucket < test_fraction:
        return "test"
    if bucket < test_fraction + dev_fraction:
        return "dev"
    if bucket < test_fraction + dev_fraction + gate_fraction:
        return "gate"
    return "train"


def import_gold(session: Session, items: Iterable[GoldItem], source: str) -> tuple[int, int]:
    """Insert new examples; texts already stored are skipped. Returns (inserted, skipped)."""
    items = list(items)
    digests = {text_digest(i.text) for i in items}
    existing: set[str] = set()
    digest_list = list(digests)
    for start in range(0, len(digest_list), 500):
        chunk = digest_list[start : start + 500]
        existing.update(
            session.scalars(
                select(GoldExample.text_sha256).where(GoldExample.text_sha256.in_(chunk))
            )
        )
    inserted = 0
    for item in items:
        digest = text_digest(item.text)
        if digest in existing:
            continue
        existing.add(digest)
        session.add(
            GoldExample(
                text_sha256=digest,
                text=item.text,
                label=item.label,
                split=item.split,
                source=source,
            )
        )
        inserted += 1
    session.flush()
    return inserted, len(items) - inserted


def load_split(session: Session, split: str) -> tuple[list[str], list[str]]:
    """(texts, labels) of one split, in insertion order."""
    rows = session.execute(
        select(GoldExample.text, GoldExample.label)
        .where(GoldExample.split == split)
        .order_by(GoldExample.id)
    ).all()
    return [r[0] for r in rows], [r[1] for r in rows]


def split_counts(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(GoldExample.split, func.count()).group_by(GoldExample.split)
    ).all()
    counts = {split: 0 for split in SPLITS}
    counts.update({r[0]: r[1] for r in rows})
    return counts


def gold_labels(session: Session) -> list[str]:
    return sorted(session.scalars(select(GoldExample.label).distinct()))


def all_texts(session: Session, splits: Iterable[str]) -> set[str]:
    return set(session.scalars(select(GoldExample.text).where(GoldExample.split.in_(list(splits)))))
