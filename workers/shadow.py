"""Shadow scoring: once a candidate is ready, it and the champion label the same texts in
the job, off the request path, to find where they answer differently.

Two sets of texts, neither of which any model was trained or selected on:
- the gold `gate` split: its labels are known, so its disagreements judge for free;
- the job's review sample (`workers/pipeline.py::review_sample`): the newest distinct
  stored texts that are not gold, stored after the champion's pool and held back from the
  candidate's. Its disagreements, deduplicated and in an order fixed by the job (so that
  any labeled part of the queue is a fair sample), are what people are asked to label.

Why held back: a candidate taught by a stronger teacher learns the teacher's answers on
every text of its pool. Judged on those same texts, it looks better than it will be on
new traffic (docs/simulate.md measured how much), and the gate publishes what it should
not.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from app.ml.disagreement_test import Tally, tally
from app.ml.modeling import Classifier
from app.ml.training import predict
from app.store.reviews import Disagreement
from workers.pipeline import Evaluation, Gold, ReviewSample


@dataclass(frozen=True)
class Evidence:
    """What candidate and champion were both run on, and where they disagree."""

    gate_texts: int
    gate_tally: Tally  # the gate split's disagreements: wins, losses and ties, all labeled
    traffic_texts: int
    traffic: list[Disagreement]  # traffic disagreements, in the order they are queued

    @property
    def texts(self) -> int:
        return self.gate_texts + self.traffic_texts

    @property
    def disagreements(self) -> int:
        return self.gate_tally.labeled + len(self.traffic)

    @property
    def disagreement_rate(self) -> float:
        return self.disagreements / self.texts if self.texts else 0.0


def gate_tally(data: Gold, candidate: Evaluation, champion: Evaluation) -> Tally:
    """Wins, losses and ties of the candidate on the gate split (none without one)."""
    if "gate" not in candidate.predictions:
        return Tally()
    return tally(data.gate[1], candidate.predictions["gate"], champion.predictions["gate"])


def shadow_score(
    job_id: str,
    candidate: Classifier,
    champion: Classifier,
    sample: ReviewSample,
    progress: Callable[[float], None],
) -> tuple[int, list[Disagreement]]:
    """Both models on the job's review sample: how many texts that was, and the
    disagreements, shuffled with the job's id as the seed (the same job queues the same
    order, however often it runs)."""
    if not sample.rows:
        return 0, []
    texts = sample.texts
    ours = predict(candidate, texts, lambda f, _loss: progress(f / 2))
    theirs = predict(champion, texts, lambda f, _loss: progress(0.5 + f / 2))
    found = [
        Disagreement(text, mine, other, row_id)
        for (row_id, text), mine, other in zip(sample.rows, ours, theirs, strict=True)
        if mine != other
    ]
    random.Random(job_id).shuffle(found)
    return len(texts), found
