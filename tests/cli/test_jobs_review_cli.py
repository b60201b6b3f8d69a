"""`pfp jobs` with a job whose candidate waits for reviews: the list says what it needs, and
`watch` keeps watching, saying what it still needs, until the gate decides."""

from __future__ import annotations

import threading
import time

import pytest

from app.store import jobs, review_answers, reviews
from tests.cli.test_cli import pfp
from tests.conftest import LiveServer
from tests.workers.test_gate import (
    WAITING,
    answer_by_rules,
    store_traffic,
    submit,
    traffic_wrong,
    truth,
)
from workers import gate
from workers.retrain import run_retrain_job


def _review_slowly(live: LiveServer, job_id: str) -> None:
    """A person answering a disagreement every few tenths of a second, and the worker
    looking again after each answer, until the gate decides."""
    time.sleep(1.0)
    while True:
        with live.store.session() as s:
            job = jobs.get_job(s, job_id)
            assert job is not None
            if job.status != jobs.PENDING_REVIEW:
                return
            item = reviews.list_items(s, reviews.DISAGREEMENT, job_id=job_id, limit=1)[0]
            review_answers.label_item(s, item.id, truth(item.text), "cli")
        gate.judge_pending(live.settings, live.store, job_id)
        time.sleep(0.3)


def test_watch_follows_a_job_through_its_reviews(
    live_server: LiveServer, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    live = live_server
    store_traffic(live.store)
    answer_by_rules(monkeypatch, live.settings, traffic_wrong)
    job_id = submit(live.store, **WAITING)
    run_retrain_job(job_id, live.settings, live.store)

    status, out, _ = pfp(capsys, live, "jobs", "list")
    assert status == 0 and "pending_review" in out and "pending review: needs" in out

    reviewer = threading.Thread(target=_review_slowly, args=(live, job_id))
    reviewer.start()
    status, out, err = pfp(capsys, live, "jobs", "watch", job_id, "--interval", "0.2")
    reviewer.join(60)
    assert status == 0, (out, err)
    waiting = [line for line in out.splitlines() if line.startswith("Pending review: needs")]
    assert waiting and "decisive labels" in waiting[0] and "power" in waiting[0]
    assert f"pfp review --queue disagreement --job {job_id}" in waiting[0]
    assert len(waiting) >= 2  # a new line each time what it needs changed
    assert f"Job {job_id} succeeded." in out
    decision = next(line for line in out.splitlines() if line.startswith("Decision:"))
    assert "gate-split texts" in decision and "reviewed traffic texts" in decision
    assert "power" in decision and "shown better" in decision
    assert "review: 100%" in err and "pending_review" in err
