"""The dashboard's job row for a candidate waiting for reviews: what it needs, and a link
that takes the review card to the job's disagreements, in a real headless Chromium."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from app.ml.disagreement_test import Tally
from app.ml.job_params import PromotionParams
from app.ml.promotion import gate_terms
from app.registry import PENDING, write_version
from app.store import jobs, reviews
from app.store.reviews import Disagreement
from tests.conftest import ADMIN_KEY, LABELS, LiveServer
from tests.dashboard.test_dashboard import _chromium_or_skip, open_page
from workers import gate


def _waiting_job(live: LiveServer) -> tuple[str, int]:
    """A job as one looks once its candidate waits: gate record, pending version, queue."""
    candidate = write_version(
        live.settings,
        live.store,
        lambda folder: (folder / "config.json").write_text("{}"),  # type: ignore[func-returns-value]
        labels=LABELS,
        parent_version=1,
        job_id=None,
        metrics={},
        lineage={},
        decision=PENDING,
    )
    terms = gate_terms(PromotionParams(), default_margin=0.0)
    judged = gate.Judged(30, Tally(), 90, 2, 2)
    verdict, reason = gate.first_look(terms, judged)
    assert verdict is not None and verdict.verdict == "pending"
    record = gate.gate_record(terms, judged, verdict, reason, datetime.now(UTC))
    with live.store.session() as s:
        job = jobs.create_job(s, {}, 0, "api")
        job.status, job.stage, job.progress = jobs.PENDING_REVIEW, "review", 1.0
        job.champion_version, job.candidate_version = 1, candidate
        job.metrics = {"comparison": record}
        job.decision_reason = f"v1 champion; {reason}"
        reviews.add_disagreements(
            s,
            job.id,
            candidate,
            1,
            [
                Disagreement("@united lost my bag again", "negative", "neutral"),
                Disagreement("@jetblue what is the gate number", "neutral", "positive"),
            ],
        )
        return job.id, verdict.reviews_needed


@pytest.mark.integration  # a real browser against a live server
def test_a_waiting_job_links_to_its_reviews_in_chromium(live_server: LiveServer, tmp_path: Path):
    executable = _chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    live = live_server
    job_id, needs = _waiting_job(live)
    with sync_playwright() as pw:
        browser, page, errors = open_page(pw, executable, expected=r"^$")
        page.goto(f"{live.url}/dashboard")
        page.fill("#api-key", ADMIN_KEY)
        page.click("#connect-form button[type=submit]")
        row = page.locator(f'tr[data-job-id="{job_id}"]')
        expect(row.locator('[data-field="status"]')).to_contain_text("pending_review")
        link = row.locator("a[data-review-job]")
        expect(link).to_have_text(f"pending review: needs {needs} more")
        expect(page.locator("#job-review")).to_contain_text("2 open, 0 labeled of 2 queued")
        link.click()
        card = page.locator("#review")
        expect(page.locator('button[data-queue="disagreement"]')).to_have_class("selected")
        expect(card.locator(".review-said")).to_contain_text("candidate v2 said negative")
        page.screenshot(path=str(tmp_path / "pending.png"), full_page=True)
        browser.close()
    assert errors == [], errors
