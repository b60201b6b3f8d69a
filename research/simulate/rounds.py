"""One arm over one seed, round after round: the round's traffic through `/label`, a
retraining job, the gate's reviews and its decision, the rest of the labeling budget,
the swap; after every round the served model's scores on the fixed test split and every
gate decision with the candidate's true difference from its champion on that split."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from app.core.config import Settings
from app.store import gold, versions
from app.store.database import Store
from app.store.tables import PseudoLabel
from research.simulate.config import Arm, SimulateConfig
from research.simulate.data import SeedData
from research.simulate.labeler import label_at_random, label_uncertain, review_disagreements
from research.simulate.service import Service

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
# What the replay needs of the gate's terms (app/ml/promotion.py GateTerms).
GATE_TERMS = (
    "margin", "min_gain", "alpha", "target_power", "looks", "look_spacing", "early_level",
)  # fmt: skip


def _test_scores(metrics: dict[str, Any]) -> dict[str, float]:
    test = metrics["test"]
    return {"macro_f1": test["macro_f1"], "accuracy": test["accuracy"]}


def served_scores(settings: Settings) -> tuple[int, dict[str, float]]:
    """The active version of the store under `settings` and its scores on the test split
    (measured when it was made: the bootstrap's or its job's evaluation)."""
    store = Store(settings.store_url)
    try:
        with store.session() as session:
            version = versions.active_version(session)
            row = versions.get_version(session, version) if version is not None else None
            assert version is not None and row is not None
            return version, _test_scores(row.metrics)
    finally:
        store.dispose()


def decision_record(
    job: dict[str, Any], number: int, reviews: int, decided_by: str
) -> dict[str, Any]:
    """A gate decision with the candidate's and champion's true scores on the test split,
    which the gate never reads."""
    metrics = job["metrics"]
    comparison = metrics["comparison"]
    judged = comparison["judged"]
    candidate, champion = _test_scores(metrics["candidate"]), _test_scores(metrics["champion"])
    return {
        "round": number,
        "job_id": job["id"],
        "candidate_version": job["candidate_version"],
        "champion_version": job["champion_version"],
        "published": bool(job["promoted"]),
        "verdict": (comparison.get("verdict") or {}).get("verdict"),
        "decided_by": decided_by,
        "reviews": reviews,
        "gate_texts": judged["gate_texts"],
        "gate_disagreements": judged["gate_disagreements"],
        "traffic_disagreements": judged["traffic_disagreements"],
        "queued": judged["queued"],
        "traffic_texts": judged["traffic_texts"],
        "traffic_batches": judged.get("batches", 0),
        "power": comparison.get("power"),
        "looks": len(comparison.get("looks_taken") or []),
        "candidate_test": candidate,
        "champion_test": champion,
        "test_macro_f1_gain": round(candidate["macro_f1"] - champion["macro_f1"], 5),
        "test_accuracy_gain": round(candidate["accuracy"] - champion["accuracy"], 5),
        "reason": job["decision_reason"],
        # The gate's terms and last verdict, so that a later gate can judge the same
        # evidence again (research/simulate/replay.py).
        "gate": {
            "terms": {k: comparison.get(k) for k in GATE_TERMS},
            "verdict": comparison.get("verdict"),
        },
    }


def audit(settings: Settings, test: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Where the fixed test split's texts are in the store at the end: only in gold test,
    never in another split nor stored as traffic."""
    test_texts = {t for t, _ in test}
    store = Store(settings.store_url)
    try:
        with store.session() as session:
            trained = gold.all_texts(session, ("train", "dev", "gate"))
            tested = gold.all_texts(session, ("test",))
            stored = set(session.scalars(select(PseudoLabel.text).distinct()))
            counts = gold.split_counts(session)
            rows = session.scalar(select(func.count()).select_from(PseudoLabel))
    finally:
        store.dispose()
    return {
        "gold_splits": counts,
        "stored_predictions": rows,
        "test_texts_in_gold_test": len(test_texts & tested),
        "test_texts_in_train_dev_gate": len(test_texts & trained),
        "test_texts_stored_as_traffic": len(test_texts & stored),
    }


@dataclass
class Waiting:
    """A candidate whose queued disagreements were labeled out undecided: it waits for new
    traffic to review."""

    job_id: str
    reviews: int  # labels it was given so far
    rounds: int = 0  # rounds of traffic it has waited


def _batches(job: dict[str, Any]) -> int:
    return int(job["metrics"]["comparison"]["judged"].get("batches", 0))


def _decide_waiting(
    service: Service, waiting: Waiting, truth: dict[str, str], budget: int, may_wait_more: bool
) -> tuple[int, dict[str, Any] | None]:
    """A round's traffic has arrived: beat shows the waiting candidate its new traffic a
    batch at a time, and the batch's disagreements are labeled, until it is decided, the
    budget is spent or no batch is left. Still undecided, it waits another round where it
    `may_wait_more`, else it is decided as at its deadline. Returns (labels given now, its
    decision, or None while it still waits)."""
    waiting.rounds += 1
    spent, how = 0, "waiting"
    while spent < budget:
        shown = _batches(service.job(waiting.job_id))
        service.look_again(waiting.job_id)
        service.run_tasks()
        given, how = review_disagreements(
            service, waiting.job_id, truth, budget - spent, may_wait=True
        )
        spent += given
        if how != "waiting" or _batches(service.job(waiting.job_id)) == shown:
            break
    waiting.reviews += spent
    job = service.job(waiting.job_id)
    if how == "waiting" and job["status"] == "pending_review":
        if may_wait_more:
            return spent, None
        deadline = datetime.fromisoformat(job["metrics"]["comparison"]["deadline"])
        service.decide_at(waiting.job_id, deadline + timedelta(seconds=1))
        job, how = service.job(waiting.job_id), "deadline"
    if job["status"] != "succeeded" or job["candidate_version"] is None:
        return spent, None
    if job["metrics"]["comparison"].get("champion_changed_to") is not None:
        # Its champion was replaced, by another candidate, while it waited: the gate did
        # not judge it to the end.
        how = "superseded"
    record = decision_record(job, 0, waiting.reviews, how)
    return spent, {**record, "waited_rounds": waiting.rounds}


def _review_waiting(
    service: Service,
    config: SimulateConfig,
    truth: dict[str, str],
    waiting: list[Waiting],
    final: bool,
) -> tuple[int, list[dict[str, Any]]]:
    """The waiting candidates, oldest first, within the round's budget; those decided
    leave `waiting`. Returns (labels given, decisions)."""
    reviews, decisions = 0, []
    for candidate in list(waiting):
        may_wait_more = not final and candidate.rounds + 1 < config.wait_rounds
        given, decision = _decide_waiting(
            service, candidate, truth, config.budget - reviews, may_wait_more
        )
        reviews += given
        if decision is not None or service.job(candidate.job_id)["status"] != "pending_review":
            waiting.remove(candidate)
        if decision is not None:
            decisions.append(decision)
    return reviews, decisions


def _served_row(
    service: Service, texts: Sequence[str], labels: dict[str, int], job: dict[str, Any] | None
) -> dict[str, Any]:
    """The round's row, once the API process serves what is active: the served version
    and its test scores, the traffic, the labels spent and the round's job (None: none)."""
    active = service.wait_for_swap()
    return {
        "served_version": active["version"],
        "served_test": _test_scores(active["model"]["metrics"]),
        "traffic_texts": len(texts),
        "labels": labels,
        "job": job,
    }


def _one_round(
    service: Service,
    arm: Arm,
    config: SimulateConfig,
    seed: int,
    texts: Sequence[str],
    seen: list[str],
    truth: dict[str, str],
    rng: random.Random,
    waiting: list[Waiting],
    number: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Traffic; the decisions of candidates that waited for it; the round's job and its
    reviews; the rest of the budget; swap: (the round, its decisions). After the last
    round with a job (`number` > config.rounds) only the waiting candidates are reviewed.
    `waiting` is updated."""
    service.label(texts)
    seen.extend(texts)
    reviews, decisions = _review_waiting(
        service, config, truth, waiting, final=number == config.steps
    )
    if number > config.rounds:
        return _served_row(service, texts, {"reviews": reviews, "total": reviews}, None), decisions
    job_id = service.submit_job(config.params(arm, seed))
    service.run_tasks()
    job = service.job(job_id)
    mine, decided_by = 0, "end of job"
    if job["status"] == "pending_review":
        mine, decided_by = review_disagreements(
            service, job_id, truth, config.budget - reviews, may_wait=config.wait_rounds > 0
        )
        job = service.job(job_id)
    if decided_by == "waiting":
        waiting.append(Waiting(job_id, mine))
    reviews += mine
    rest = config.budget - reviews
    if arm.rest_of_budget == "random":
        others = label_at_random(service, seen, truth, rest, rng)
    else:
        others = label_uncertain(service, truth, rest)
    if decided_by != "waiting" and job["candidate_version"] is not None:
        decisions.append({**decision_record(job, 0, mine, decided_by), "waited_rounds": 0})
    labels = {"reviews": reviews, arm.rest_of_budget: others, "total": reviews + others}
    state = {"id": job_id, "status": job["status"], "error": job["error"]}
    return _served_row(service, texts, labels, state), decisions


def run_arm(
    config: SimulateConfig,
    arm: Arm,
    seed: int,
    seed_data: SeedData,
    settings: Settings,
    test: Sequence[tuple[str, str]],
    progress: Progress,
) -> dict[str, Any]:
    """Every round of `arm` on `seed`, in the store under `settings` (a copy of the
    seed's first model); returns the arm's record for results.json."""
    started = time.monotonic()
    version, scores = served_scores(settings)
    first = {"round": 0, "served_version": version, "served_test": scores, "labels": {"total": 0}}
    record: dict[str, Any] = {"seed": seed, "arm": arm.name, "rounds": [first], "decisions": []}
    if not arm.retrains:
        # Nothing the traffic or labels do changes what serves: the first model's scores.
        for number in range(1, config.steps + 1):
            record["rounds"].append({**first, "round": number})
        record["seconds"] = round(time.monotonic() - started, 1)
        return record
    seen: list[str] = []
    waiting: list[Waiting] = []  # candidates that wait for the next round's traffic
    rng = random.Random(f"{seed}:{arm.name}")
    gold_only = arm.pretraining == "none"
    match_taught = gold_only and config.matched_arm() == "loop_teacher"
    with Service(settings, gold_only, match_taught) as service:
        service.wait_for_swap()
        for number, texts in enumerate(seed_data.rounds, 1):
            step = f"{config.step_name(number)} ({number}/{config.steps})"
            progress(f"seed {seed} · {arm.name} · {step}")
            round_started = time.monotonic()
            texts_only = [t for t, _ in texts]
            row, decisions = _one_round(
                service, arm, config, seed, texts_only, seen, seed_data.truth, rng, waiting, number
            )
            row = {"round": number, **row, "seconds": round(time.monotonic() - round_started, 1)}
            record["rounds"].append(row)
            record["decisions"] += [{**d, "round": number} for d in decisions]
    record["audit"] = audit(settings, test)
    record["seconds"] = round(time.monotonic() - started, 1)
    return record


def data_dir_for(root: Path, seed: int, arm: str) -> Path:
    return root / f"seed{seed}" / arm
