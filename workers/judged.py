"""What the gate judged a candidate on, and the decision line that says so in words.

The first look writes it when the job ends (workers/gate.py); each batch of new traffic a
waiting candidate is shown adds to it (workers/review_traffic.py); every later look reads
it. It is kept in the job's `comparison.judged` and the version's lineage. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.ml.disagreement_test import GateVerdict, Tally
from app.ml.promotion import GateTerms


@dataclass(frozen=True)
class Judged:
    """What the gate judged a candidate on: fixed at the end of its job, grown by each
    batch of new traffic while it waits."""

    gate_texts: int
    gate_tally: Tally
    traffic_texts: int
    traffic_disagreements: int
    queued: int  # of those, queued for review
    # The newest stored prediction whose traffic has been looked at: the job's mark, then
    # the last batch of new traffic's. None: no new traffic is shown to the candidate.
    traffic_upto: int | None = None
    traffic_batch: int = 0  # texts in a batch of new traffic: the job's own review sample
    batches: int = 0  # batches of new traffic scored since the job
    # The most disagreements queued for it in all (REVIEW_MAX_ITEMS): the labels one
    # decision may ask of people, however many batches of new traffic it is shown.
    queue_limit: int = 0

    @property
    def texts(self) -> int:
        return self.gate_texts + self.traffic_texts

    @property
    def disagreement_rate(self) -> float:
        found = self.gate_tally.labeled + self.traffic_disagreements
        return found / self.texts if self.texts else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "gate_texts": self.gate_texts,
            "gate_disagreements": self.gate_tally.labeled,
            "gate_tally": {
                "wins": self.gate_tally.wins,
                "losses": self.gate_tally.losses,
                "ties": self.gate_tally.ties,
            },
            "traffic_texts": self.traffic_texts,
            "traffic_disagreements": self.traffic_disagreements,
            "queued": self.queued,
            "traffic_upto": self.traffic_upto,
            "traffic_batch": self.traffic_batch,
            "batches": self.batches,
            "queue_limit": self.queue_limit,
        }

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> Judged:
        return cls(
            gate_texts=stored["gate_texts"],
            gate_tally=Tally(**stored["gate_tally"]),
            traffic_texts=stored["traffic_texts"],
            traffic_disagreements=stored["traffic_disagreements"],
            queued=stored["queued"],
            traffic_upto=stored.get("traffic_upto"),  # absent from jobs judged before it
            traffic_batch=stored.get("traffic_batch", 0),
            batches=stored.get("batches", 0),
            queue_limit=stored.get("queue_limit", 0),
        )

    def waits_for_traffic(self, terms: GateTerms) -> bool:
        """Whether new traffic can bring this candidate more disagreements to review: it
        may wait for reviews, and its queue has room."""
        return (
            terms.review_hours > 0
            and self.traffic_upto is not None
            and self.queued < self.queue_limit
        )

    @property
    def room(self) -> int:
        """Disagreements that may still be queued for it."""
        return max(0, self.queue_limit - self.queued)


def _sources(judged: Judged, reviewed: int) -> str:
    """What judged the candidate, in words: the decision line starts with it."""
    parts = []
    if judged.gate_texts:
        parts.append(
            f"{judged.gate_texts} gate-split texts ({judged.gate_tally.labeled} disagreements)"
        )
    if judged.traffic_texts:
        batches = f"{judged.batches} batch" + ("es" if judged.batches > 1 else "")
        since = f", {batches} of them stored since its job" if judged.batches else ""
        parts.append(
            f"{reviewed} reviewed traffic texts (of {judged.traffic_disagreements} "
            f"disagreements in {judged.traffic_texts} recent stored texts neither model "
            f"learned from{since})"
        )
    return " and ".join(parts)


def explain(judged: Judged, verdict: GateVerdict, reviewed: int) -> str:
    """The decision line a user sees: what judged, how many texts, the test and its power."""
    where = f"judged on {_sources(judged, reviewed)}: "
    if verdict.verdict == "pending":
        return (
            f"{where}pending review: {verdict.reason}; power {verdict.power:.0%} at the "
            f"planned count ({verdict.looks_used} of {verdict.looks} looks taken)"
        )
    return where + verdict.reason
