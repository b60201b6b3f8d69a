"""The uncertainty queue's choice: the stored texts whose labels would teach the most.

A text the serving model was unsure of is worth a label: its margin (top probability minus
the second) is small, or its entropy large. Taking only the most uncertain texts would
fill the queue with one class where the model hesitates most, so the choice goes round the
predicted classes, taking each class's most uncertain text in turn. A text is chosen once
(its most uncertain occurrence), never when it is gold already (any split: a dev or test
text must not turn into training data) nor when it was ever queued.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.store import retention, reviews, versions
from app.store.gold import text_digest
from app.store.reviews import Uncertain
from app.store.tables import PseudoLabel

ScoreKind = Literal["margin", "entropy"]
SCORE_KINDS: tuple[str, ...] = get_args(ScoreKind)


@dataclass(frozen=True)
class StoredPrediction:
    """A stored pseudo-label with the label order of the model whose logits it holds."""

    id: int
    text: str
    logits: Sequence[float]
    labels: Sequence[str]
    model_version: int


@dataclass(frozen=True)
class Filled:
    scanned: int  # stored predictions looked at (the newest)
    eligible: int  # of those, texts neither gold nor ever queued
    added: int


def probabilities(logits: Sequence[float]) -> list[float]:
    """Softmax, shifted by the largest logit so that no exponent overflows."""
    top = max(logits)
    weights = [math.exp(x - top) for x in logits]
    total = sum(weights)
    return [w / total for w in weights]


def uncertainty(probs: Sequence[float], by: ScoreKind) -> tuple[float, float]:
    """(score, priority): the margin or the entropy, and the same as a priority in [0, 1]
    where 1 is the most uncertain (1 - margin; the entropy over its maximum, log K), so
    that items scored either way can be served in one order."""
    if by == "margin":
        ranked = sorted(probs, reverse=True)
        score = ranked[0] - (ranked[1] if len(ranked) > 1 else 0.0)
        return score, 1.0 - score
    if by == "entropy":
        score = -sum(p * math.log(p) for p in probs if p > 0.0)
        return score, score / math.log(len(probs)) if len(probs) > 1 else 0.0
    raise ValueError(f"score must be one of {SCORE_KINDS}, not {by!r}")


def select_uncertain(
    predictions: Iterable[StoredPrediction], size: int, by: ScoreKind = "margin"
) -> list[Uncertain]:
    """The `size` texts to ask about: each text once (its most uncertain prediction),
    taken round the predicted classes, each class's most uncertain first."""
    best: dict[str, Uncertain] = {}
    for p in predictions:
        if len(p.logits) != len(p.labels) or not p.logits:
            continue  # logits of another label set: nothing to read them by
        probs = probabilities(p.logits)
        score, priority = uncertainty(probs, by)
        top = max(range(len(probs)), key=probs.__getitem__)
        candidate = Uncertain(
            text=p.text,
            pseudo_label_id=p.id,
            model_version=p.model_version,
            predicted_label=p.labels[top],
            score_kind=by,
            score=score,
            priority=priority,
        )
        kept = best.get(p.text)
        if kept is None or candidate.priority > kept.priority:
            best[p.text] = candidate
    by_class: dict[str, list[Uncertain]] = defaultdict(list)
    for u in best.values():
        by_class[u.predicted_label].append(u)
    order = _most_uncertain_first
    groups = [sorted(group, key=order) for group in by_class.values()]
    chosen: list[Uncertain] = []
    depth = 0
    while len(chosen) < size:
        round_ = sorted((g[depth] for g in groups if depth < len(g)), key=order)
        if not round_:
            break
        chosen.extend(round_[: size - len(chosen)])
        depth += 1
    return chosen


def _most_uncertain_first(u: Uncertain) -> tuple[float, int]:
    return (-u.priority, -u.pseudo_label_id)  # ties: the newer text


def recent_predictions(
    session: Session, classes: Sequence[str], scan: int
) -> list[StoredPrediction]:
    """The newest `scan` stored predictions made by models with these classes, above the
    retention mark (rows being removed are not offered)."""
    label_sets = versions.label_sets(session)
    usable = [v for v, labels in label_sets.items() if sorted(labels) == sorted(classes)]
    if not usable:
        return []
    rows = session.execute(
        select(PseudoLabel.id, PseudoLabel.text, PseudoLabel.logits, PseudoLabel.model_version)
        .where(
            PseudoLabel.id > retention.deleted_upto(session),
            PseudoLabel.model_version.in_(usable),
        )
        .order_by(PseudoLabel.id.desc())
        .limit(scan)
    ).all()
    return [
        StoredPrediction(r.id, r.text, r.logits, label_sets[r.model_version], r.model_version)
        for r in rows
    ]


def fill_uncertainty(
    session: Session, size: int, by: ScoreKind = "margin", scan: int = 20_000
) -> Filled:
    """Add up to `size` texts to the uncertainty queue, chosen among the newest `scan`
    stored predictions. Raises reviews.NoClasses before the first model."""
    if by not in SCORE_KINDS:
        raise ValueError(f"score must be one of {SCORE_KINDS}, not {by!r}")
    classes = reviews.active_classes(session)
    recent = recent_predictions(session, classes, scan)
    digests = {p.text: text_digest(p.text) for p in recent}
    known = reviews.gold_digests(session, digests.values()) | reviews.queued_digests(
        session, digests.values()
    )
    eligible = [p for p in recent if digests[p.text] not in known]
    added = reviews.add_uncertain(session, select_uncertain(eligible, size, by))
    return Filled(scanned=len(recent), eligible=len({p.text for p in eligible}), added=added.added)
