"""One arm over one seed, round after round: the round's traffic through `/label`, a
retraining job, the gate's reviews and its decision, the rest of the labeling budget,
the swap; after every round the served model's scores on the fixed test split and every
gate decision with the candidate's true difference from its champion on that split."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
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
GATE_TERMS = ("margin", "min_gain", "alpha", "target_power", "looks")


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


def _one_round(
    service: Service,
    arm: Arm,
    config: SimulateConfig,
    seed: int,
    texts: Sequence[str],
    seen: list[str],
    truth: dict[str, str],
    rng: random.Random,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Traffic, job, reviews, the rest of the budget, swap: (the round, its decision)."""
    service.label(texts)
    seen.extend(texts)
    job_id = service.submit_job(config.params(arm, seed))
    service.run_tasks()
    job = service.job(job_id)
    reviews, decided_by = 0, "end of job"
    if job["status"] == "pending_review":
        reviews, decided_by = review_disagreements(service, job_id, truth, config.budget)
        job = service.job(job_id)
    rest = config.budget - reviews
    if arm.rest_of_budget == "random":
        others = label_at_random(service, seen, truth, rest, rng)
    else:
        others = label_uncertain(service, truth, rest)
    active = service.wait_for_swap()
    decision = None
    if job["status"] == "succeeded" and job["candidate_version"] is not None:
        decision = decision_record(job, 0, reviews, decided_by)
    row = {
        "served_version": active["version"],
        "served_test": _test_scores(active["model"]["metrics"]),
        "traffic_texts": len(texts),
        "labels": {"reviews": reviews, arm.rest_of_budget: others, "total": reviews + others},
        "job": {"id": job_id, "status": job["status"], "error": job["error"]},
    }
    return row, decision


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
        for number in range(1, config.rounds + 1):
            record["rounds"].append({**first, "round": number})
        record["seconds"] = round(time.monotonic() - started, 1)
        return record
    seen: list[str] = []
    rng = random.Random(f"{seed}:{arm.name}")
    gold_only = arm.pretraining == "none"
    match_taught = gold_only and config.matched_arm() == "loop_teacher"
    with Service(settings, gold_only, match_taught) as service:
        service.wait_for_swap()
        for number, texts in enumerate(seed_data.rounds, 1):
            progress(f"seed {seed} · {arm.name} · round {number}/{config.rounds}")
            round_started = time.monotonic()
            texts_only = [t for t, _ in texts]
            row, decision = _one_round(
                service, arm, config, seed, texts_only, seen, seed_data.truth, rng
            )
            row = {"round": number, **row, "seconds": round(time.monotonic() - round_started, 1)}
            record["rounds"].append(row)
            if decision is not None:
                record["decisions"].append({**decision, "round": number})
    record["audit"] = audit(settings, test)
    record["seconds"] = round(time.monotonic() - started, 1)
    return record


def data_dir_for(root: Path, seed: int, arm: str) -> Path:
    return root / f"seed{seed}" / arm
