"""The dashboard's review card: its fragment behind the admin key, escaped, and the card in
a real headless Chromium answering both queues by click and by key, with a screenshot."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.store import reviews
from app.store.reviews import Disagreement, Uncertain
from app.store.tables import ReviewItem
from tests.conftest import ADMIN, ADMIN_KEY, LABEL_KEY, LABELS, LiveServer
from tests.dashboard.test_dashboard import _chromium_or_skip, client, open_page  # noqa: F401
from tests.processes import ROOT

EVIL = '<img src=x onerror="alert(1)"> @united'


def _queue_uncertain(store, texts: list[str]) -> None:
    with store.session() as session:
        reviews.add_uncertain(
            session,
            [
                Uncertain(t, i + 1, 1, "positive", "margin", 0.01 * (i + 1), 1 - 0.01 * (i + 1))
                for i, t in enumerate(texts)
            ],
        )


def _item(store, item_id: int) -> ReviewItem:
    with store.session() as session:
        return reviews.get_item(session, item_id)


def test_the_review_fragment_needs_an_admin_key_and_escapes_the_text(client: TestClient):  # noqa: F811
    _queue_uncertain(client.store, [EVIL])  # type: ignore[attr-defined]
    path = "/dashboard/fragments/review"
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"X-API-Key": LABEL_KEY}).status_code == 403
    r = client.get(path, headers=ADMIN)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert "<img" not in r.text and "&lt;img src=x" in r.text
    assert "<strong>0</strong> labeled" in r.text and "<strong>1</strong> open" in r.text
    for n, label in enumerate(LABELS, 1):
        assert f'data-review-label="{label}"' in r.text and f'data-key="{n}"' in r.text
    assert "v1 said <strong>positive</strong> (margin 0.010)" in r.text
    empty = client.get(path, params={"queue": "disagreement"}, headers=ADMIN).text
    assert "Nothing open in the disagreement queue." in empty
    assert client.get(path, params={"queue": "gold"}, headers=ADMIN).status_code == 422


@pytest.mark.integration  # a real browser against a live server
def test_labeling_the_queues_in_chromium(live_server: LiveServer, tmp_path: Path):
    executable = _chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    live = live_server
    texts = ["@united is the 6am to Denver on time?", "@jetblue which seat is quieter?", EVIL]
    _queue_uncertain(live.store, texts)
    with live.store.session() as session:
        reviews.add_disagreements(
            session,
            "5f0c3b1e9a2d4c6e8f1a3b5c7d9e0f21",
            2,
            1,
            [Disagreement("@southwestair smooth flight, thanks", "positive", "neutral")],
        )
        ids = {i.text: i.id for i in reviews.list_items(session, "uncertainty")}
    with sync_playwright() as pw:
        # The one failed request expected: the click on an item labeled meanwhile (409).
        browser, page, errors = open_page(pw, executable, expected=r"status of 409\b")
        page.goto(f"{live.url}/dashboard")
        page.fill("#api-key", ADMIN_KEY)
        page.click("#connect-form button[type=submit]")

        # The most uncertain text first, its model's answer, a button per class.
        card = page.locator("#review")
        expect(card.locator(".review-text")).to_have_text(texts[0])
        expect(card.locator(".review-counts")).to_have_text(re.compile(r"0\s+labeled,\s+3\s+open"))
        expect(card.locator(".review-said")).to_contain_text("v1 said positive")
        expect(card.locator("button[data-review-label]")).to_have_count(len(LABELS))
        shot = tmp_path / "review.png"
        page.screenshot(path=str(shot), full_page=True)

        # A click labels it; the next text comes.
        card.locator('button[data-review-label="neutral"]').click()
        expect(card.locator(".review-text")).to_have_text(texts[1])
        expect(card.locator(".review-counts")).to_have_text(re.compile(r"1\s+labeled,\s+2\s+open"))
        first = _item(live.store, ids[texts[0]])
        assert (first.status, first.label, first.labeled_via) == ("labeled", "neutral", "dashboard")

        # Keys, as in `pfp review`: s skips, a number labels.
        page.keyboard.press("s")
        expect(card.locator(".review-text")).to_have_text(EVIL)  # shown as text, not markup
        assert _item(live.store, ids[texts[1]]).status == "skipped"
        page.keyboard.press("1")
        expect(card).to_contain_text("Nothing open in the uncertainty queue.")
        assert _item(live.store, ids[EVIL]).label == "negative"

        # Labeled elsewhere meanwhile: the refusal is shown and the queue moves on.
        page.click('button[data-queue="disagreement"]')
        expect(card.locator(".review-said")).to_contain_text(
            "candidate v2 said positive · champion v1 said neutral"
        )
        with live.store.session() as session:
            [item] = reviews.list_items(session, "disagreement")
        r = httpx.post(
            f"{live.url}/review/items/{item.id}/label", json={"label": "positive"}, headers=ADMIN
        )
        assert r.status_code == 200
        card.locator('button[data-review-label="neutral"]').click()
        expect(page.locator("#review-error")).to_contain_text("already labeled 'positive'")
        expect(card).to_contain_text("Nothing open in the disagreement queue.")
        assert _item(live.store, item.id).label == "positive"

        page.click('button[data-queue="uncertainty"]')
        expect(card.locator(".review-counts")).to_have_text(
            re.compile(r"2\s+labeled,\s+0\s+open,\s+1\s+skipped")
        )
        browser.close()
    assert shot.stat().st_size > 20_000
    results = ROOT / "bench-results"
    results.mkdir(exist_ok=True)
    shutil.copy(shot, results / "dashboard-review.png")
    assert errors == [], errors
