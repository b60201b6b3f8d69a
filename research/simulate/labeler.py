"""The people who label: they answer the review queues through the REST API with the
held-out labels of the data set, within a budget of labels per round, in the order the
queues give (as docs/labeling.md asks of people), or label texts of the traffic drawn at
random (the gold_random arm)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from app.store.reviews import DISAGREEMENT, UNCERTAINTY
from research.simulate.service import Service

ANNOTATOR = "simulate"
PAGE = 500


def _open_items(service: Service, queue: str, job_id: str | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"status": "open", "limit": PAGE}
    if job_id is not None:
        params["job_id"] = job_id
    page: dict[str, Any] = service.call("GET", f"/review/queues/{queue}/items", params=params)
    items: list[dict[str, Any]] = page["items"]
    return items


def _answer(service: Service, item: dict[str, Any], truth: dict[str, str]) -> None:
    body = {"label": truth[item["text"]], "via": "api", "annotator": ANNOTATOR}
    service.call("POST", f"/review/items/{item['id']}/label", json=body)


def review_disagreements(
    service: Service, job_id: str, truth: dict[str, str], budget: int, may_wait: bool = False
) -> tuple[int, str]:
    """Label job `job_id`'s disagreements in queue order until the gate decides, the budget
    is spent or the queue is empty. A candidate still waiting then waits for the next
    round's traffic where it `may_wait`; else it is decided as at its deadline, on what
    there is. Returns (labels given, how it was decided: "reviews", "deadline", or
    "waiting" while it waits)."""
    spent = 0
    while spent < budget:
        items = _open_items(service, DISAGREEMENT, job_id)
        if not items:
            break
        for item in items[: budget - spent]:
            _answer(service, item, truth)
            spent += 1
            service.run_tasks()  # the label asked a worker to look again
            if service.job(job_id)["status"] != "pending_review":
                return spent, "reviews"
    service.run_tasks()
    job = service.job(job_id)
    if job["status"] != "pending_review":
        return spent, "reviews"
    if may_wait:
        return spent, "waiting"
    deadline = datetime.fromisoformat(job["metrics"]["comparison"]["deadline"])
    service.decide_at(job_id, deadline + timedelta(seconds=1))
    return spent, "deadline"


def label_uncertain(service: Service, truth: dict[str, str], budget: int) -> int:
    """Fill the uncertainty queue with up to `budget` texts and label them; returns how
    many were labeled (they join gold train at once)."""
    if budget <= 0:
        return 0
    service.call("POST", "/review/queues/uncertainty/fill", json={"size": min(budget, 1000)})
    items = _open_items(service, UNCERTAINTY)[:budget]
    for item in items:
        _answer(service, item, truth)
    return len(items)


def label_at_random(
    service: Service,
    seen: Sequence[str],
    truth: dict[str, str],
    budget: int,
    rng: random.Random,
) -> int:
    """Label `budget` texts drawn at random from the traffic `seen` so far that are not
    gold yet, and import them into gold train (`POST /gold`); returns how many."""
    if budget <= 0:
        return 0
    known = service.gold_texts()
    fresh = sorted({t for t in seen if t not in known})
    chosen = rng.sample(fresh, min(budget, len(fresh)))
    if not chosen:
        return 0
    examples = [{"text": t, "label": truth[t], "split": "train"} for t in chosen]
    result = service.call("POST", "/gold", json={"examples": examples})
    inserted: int = result["inserted"]
    return inserted
