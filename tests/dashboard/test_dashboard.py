"""The dashboard: the label statistics it charts, what it shows without a key (nothing
stored), and the page itself driven in a real headless Chromium against a real uvicorn."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.dashboard import charts
from app.main import create_app
from app.registry import version_dir, write_version
from app.store import jobs, pseudo_labels, stats
from app.store.database import Store
from app.store.pseudo_labels import Prediction
from app.store.tables import utcnow
from tests.conftest import ADMIN_KEY, LABEL_KEY, LABELS, LiveServer, RecordingQueue
from tests.processes import ROOT
from workers.progress import JobReporter
from workers.retrain import STAGES

SECRET = "SECRET-customer-text-4f1c"  # a stored text that must never reach a page without a key
CHROMIUM = Path("/usr/bin/chromium")
FRAGMENTS = ["active", "versions", "jobs", "stats"]
ACTIVE_ROW = re.compile(r"\bis-active\b")


def _store_at(store: Store, moments: list[tuple[datetime, str, float]], text: str = "t") -> None:
    """Pseudo-labels created at the given instants (as the store writer would, back-dated)."""
    with store.session() as session:
        rows = pseudo_labels.add_predictions(
            session,
            [Prediction(text, label, conf, [0.0, 0.0, 0.0], 1) for _, label, conf in moments],
        )
        for row, (moment, _, _) in zip(rows, moments, strict=True):
            row.created_at = moment


# --- the statistics -------------------------------------------------------------------------


def test_label_buckets_by_hour_and_day(any_store: Store):
    base = datetime(2030, 5, 6, 10, 0, tzinfo=UTC)
    _store_at(
        any_store,
        [
            (base + timedelta(minutes=5), "positive", 0.9),
            (base + timedelta(minutes=59), "negative", 0.5),
            (base + timedelta(minutes=59), "negative", 0.7),
            (base + timedelta(hours=1, minutes=1), "positive", 0.6),
            (base + timedelta(hours=20), "neutral", 0.8),  # 06:00 the next day
            (base - timedelta(hours=1), "positive", 0.99),  # before the window
        ],
    )
    since, until = base, base + timedelta(days=2)
    with any_store.session() as session:
        hourly = stats.label_buckets(session, bucket="hour", since=since, until=until)
        daily = stats.label_buckets(session, bucket="day", since=since, until=until)
        only_v2 = stats.label_buckets(
            session, bucket="hour", since=since, until=until, model_version=2
        )
    assert [b.start for b in hourly] == [
        base,
        base + timedelta(hours=1),
        base + timedelta(hours=20),
    ]
    assert hourly[0].counts == {"positive": 1, "negative": 2}
    assert hourly[0].total == 3
    assert hourly[0].mean_confidence == pytest.approx((0.9 + 0.5 + 0.7) / 3)
    assert [b.start for b in daily] == [
        datetime(2030, 5, 6, tzinfo=UTC),
        datetime(2030, 5, 7, tzinfo=UTC),
    ]
    assert daily[0].counts == {"positive": 2, "negative": 2}
    assert daily[1].counts == {"neutral": 1}
    assert only_v2 == []


@pytest.fixture
def client(published_copy: Settings) -> Iterator[TestClient]:
    app = create_app(published_copy, job_queue=RecordingQueue())
    with TestClient(app) as c:
        c.store = app.state.store  # type: ignore[attr-defined]
        yield c


def test_stats_endpoint(client: TestClient):
    now = utcnow()
    _store_at(client.store, [(now, "positive", 0.8), (now, "negative", 0.4)])  # type: ignore[attr-defined]
    admin = {"X-API-Key": ADMIN_KEY}
    body = client.get("/stats/labels", headers=admin).json()
    assert body["bucket"] == "hour"
    assert body["labels"] == LABELS  # the active model's label order, for stable colours
    assert body["total"] == 2 and body["mean_confidence"] == pytest.approx(0.6)
    [bucket] = body["buckets"]
    assert bucket["counts"] == {"positive": 1, "negative": 1}
    assert datetime.fromisoformat(body["until"]) - datetime.fromisoformat(body["since"]) == (
        timedelta(hours=48)
    )
    day = client.get("/stats/labels", params={"bucket": "day"}, headers=admin).json()
    assert day["total"] == 2
    assert datetime.fromisoformat(day["buckets"][0]["start"]).hour == 0
    bad = [
        {"bucket": "week"},
        {"since": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"},
        {"since": "2000-01-01T00:00:00Z", "until": "2030-01-01T00:00:00Z"},  # too many buckets
        {"since": "0001-01-01T00:00:00+01:00"},
    ]
    for params in bad:
        assert client.get("/stats/labels", params=params, headers=admin).status_code == 422
    assert client.get("/stats/labels").status_code == 401
    assert client.get("/stats/labels", headers={"X-API-Key": LABEL_KEY}).status_code == 403


# --- nothing stored without a key -----------------------------------------------------------


def test_no_stored_data_without_a_key(client: TestClient):
    store: Store = client.store  # type: ignore[attr-defined]
    _store_at(store, [(utcnow(), "negative", 0.9)], text=SECRET)
    with store.session() as session:
        job = jobs.create_job(session, {}, 1, trigger="api")
        jobs.finish(job, "failed", '<img src=x onerror="alert(1)">')
        job_id = job.id
    page = client.get("/dashboard")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    for leaked in (SECRET, job_id, "negative", "macro", "v1"):
        assert leaked not in page.text, leaked
    for asset in ("dashboard.js", "dashboard.css"):
        assert client.get(f"/dashboard/static/{asset}").status_code == 200
    for name in FRAGMENTS:
        for key in (None, "wrong"):
            headers = {"X-API-Key": key} if key else {}
            r = client.get(f"/dashboard/fragments/{name}", headers=headers)
            assert r.status_code == 401, (name, key)
            assert SECRET not in r.text and job_id not in r.text
    # A label key reads the models, never the jobs nor the traffic.
    label = {"Authorization": f"Bearer {LABEL_KEY}"}
    assert client.get("/dashboard/fragments/versions", headers=label).status_code == 200
    for name in ("jobs", "stats"):
        assert client.get(f"/dashboard/fragments/{name}", headers=label).status_code == 403
    # And the admin views aggregate: a stored text never appears in any fragment.
    admin = {"X-API-Key": ADMIN_KEY}
    for name in FRAGMENTS:
        r = client.get(f"/dashboard/fragments/{name}", headers=admin)
        assert r.status_code == 200 and SECRET not in r.text
        assert r.headers["cache-control"] == "no-store"
    # Text from the store is escaped in the fragments (a job's error here).
    fragment = client.get("/dashboard/fragments/jobs", headers=admin).text
    assert "<img" not in fragment and "&lt;img src=x" in fragment


def test_charts_escape_names_from_the_store():
    evil = '<script>alert("x")</script>'
    since = datetime(2030, 1, 1, tzinfo=UTC)
    svg = charts.stacked_bars(
        [since],
        [{evil: 3}],
        [evil],
        bar_width=timedelta(hours=1),
        since=since,
        until=since + timedelta(hours=6),
        title=evil,
        x_label="time (UTC)",
        y_label="pseudo-labels",
    )
    line = charts.line_chart(
        [charts.Series(evil, [0, 1], [1.0, 0.5], "#000")],
        title="t",
        x_label="step",
        y_label="loss",
    )
    for out in (svg, line):
        assert "<script" not in out and "&lt;script&gt;" in out
    assert ">time (UTC)<" in svg and ">loss<" in line  # axes are labelled


# --- the page in a real browser -------------------------------------------------------------


def _seed_history(live: LiveServer) -> str:
    """Traffic over the last day, and a finished job whose rejected candidate is v2."""
    now = utcnow()
    moments = []
    for hours_ago in range(0, 30, 1):
        n = 3 + (hours_ago * 7) % 9
        for i in range(n):
            label = LABELS[(hours_ago + i) % 3 if i % 4 else 0]
            moments.append(
                (now - timedelta(hours=hours_ago, minutes=i), label, 0.55 + (i % 5) / 11)
            )
    _store_at(live.store, moments, text=SECRET)
    steps = list(range(10, 210, 10))
    with live.store.session() as session:
        job = jobs.create_job(session, {"mlm_weight": 1.0}, 1, trigger="beat")
        job.status, job.stage, job.started_at = "running", "publishing", now - timedelta(hours=2)
        job.history = {
            "pretraining": {
                "step": steps,
                "loss": [3.2 * 0.985**s + 0.9 for s in steps],
                "task_loss": [0.9 * 0.99**s + 0.3 for s in steps],
                "mlm_loss": [2.3 * 0.985**s + 0.6 for s in steps],
            },
            "finetuning": {"step": steps[:12], "loss": [1.1 * 0.97**s + 0.35 for s in steps[:12]]},
        }
        done_id = job.id
    evaluated = {
        "dev": {"accuracy": 0.61, "macro_f1": 0.58},
        "test": {"accuracy": 0.6, "macro_f1": 0.57},
    }
    v1 = version_dir(live.settings, 1)
    candidate = write_version(
        live.settings,
        live.store,
        lambda folder: shutil.copytree(v1, folder, dirs_exist_ok=True),
        labels=LABELS,
        parent_version=1,
        job_id=done_id,
        metrics=evaluated,
        lineage={"kind": "retrain", "job_id": done_id},
        decision="rejected",
    )
    with live.store.session() as session:
        job = jobs.get_job(session, done_id)
        assert job is not None
        job.metrics = {"candidate": evaluated, "champion": evaluated}
        job.candidate_version, job.champion_version, job.promoted = candidate, 1, False
        job.decision_reason = (
            "dev macro-F1 0.5800 vs champion v1 0.5800 (gain +0.0000, margin +0.0100)"
        )
        jobs.finish(job, "succeeded")
    return done_id


def _chromium_or_skip() -> str:
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(
                "CI needs /usr/bin/chromium: .ci/run installs it (apt-get install chromium)"
            )
        pytest.skip("no /usr/bin/chromium: `apt-get install -y chromium` to run the browser test")
    # Debian's /usr/bin/chromium is a shell wrapper; drive the binary it starts.
    binary = Path("/usr/lib/chromium/chromium")
    return str(binary if binary.exists() else CHROMIUM)


BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def open_page(pw: Any, executable: str, expected: str) -> tuple[Any, Any, list[str]]:
    """A headless Chromium and a wide page in it; the page's script errors, and console
    errors except the failed requests matching `expected`, collect in the list."""
    browser = pw.chromium.launch(executable_path=executable, args=BROWSER_ARGS)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: (
            errors.append(msg.text)
            if msg.type == "error" and not re.search(expected, msg.text)
            else None
        ),
    )
    return browser, page, errors


@pytest.mark.integration  # a real browser against a live server
def test_dashboard_in_chromium(live_server: LiveServer, tmp_path: Path):
    executable = _chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    live = live_server
    _seed_history(live)
    with sync_playwright() as pw:
        # The wrong key's 401 and the label key's 403s are expected; nothing else may fail.
        browser, page, errors = open_page(pw, executable, expected=r"status of 40[13]\b")
        page.on("dialog", lambda dialog: dialog.accept())  # the activate confirmation
        page.goto(f"{live.url}/dashboard")

        # No key yet: the prompt, and nothing stored on the page.
        expect(page.locator("#connect-form")).to_be_visible()
        expect(page.locator("#main")).to_be_hidden()
        assert SECRET not in page.content() and "macro" not in page.content()

        # A wrong key is refused and asked for again.
        page.fill("#api-key", "not-a-key")
        page.click("#connect-form button[type=submit]")
        expect(page.locator("#connect-error")).to_contain_text("refused")
        expect(page.locator("#connect-form")).to_be_visible()

        # A label key: models readable, jobs and traffic not, and rollback refused (403).
        page.fill("#api-key", LABEL_KEY)
        page.click("#connect-form button[type=submit]")
        expect(page.locator("#role-pill")).to_have_text("label key · read-only")
        expect(page.locator("#jobs")).to_contain_text("needs an admin key")
        expect(page.locator("#stats")).to_contain_text("need an admin key")
        page.click('button[data-activate="2"]')
        expect(page.locator("#activate-error")).to_contain_text("may label texts")
        expect(page.locator('tr[data-version="1"]')).to_have_class(ACTIVE_ROW)

        # Forget it; the admin key (asked once, then kept for the tab, even across a reload).
        page.click("#forget-key")
        expect(page.locator("#connect-form")).to_be_visible()
        page.fill("#api-key", ADMIN_KEY)
        page.click("#connect-form button[type=submit]")
        expect(page.locator("#role-pill")).to_have_text("admin key")
        page.reload()
        expect(page.locator("#role-pill")).to_have_text("admin key")
        expect(page.locator("#connect")).to_be_hidden()

        # The active model and its metrics.
        expect(page.locator("#active .version-big")).to_have_text("v1")
        expect(page.locator("#active")).to_contain_text("dev macro-F1")
        expect(page.locator("#served-pill")).to_have_text("serving v1")

        # Label a text through the form.
        page.fill("#label-text", "@united lost my bag again, worst airline")
        page.click("#label-submit")
        expect(page.locator("#label-result")).to_be_visible()
        assert page.locator("#result-label").inner_text() in LABELS
        expect(page.locator("#result-version")).to_have_text("v1")
        assert page.locator("#result-confidence").inner_text().endswith("%")
        expect(page.locator("#result-scores .score-row")).to_have_count(3)

        # A job submitted through the API, then driven as a worker drives it.
        r = httpx.post(f"{live.url}/jobs", headers={"X-API-Key": ADMIN_KEY}, json={})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        row = page.locator(f'tr[data-job-id="{job_id}"]')
        expect(row.locator('[data-field="status"]')).to_contain_text("queued")
        with live.store.session() as session:
            job = jobs.get_job(session, job_id)
            assert job is not None
            job.status, job.started_at = "running", utcnow()
        reporter = JobReporter(live.store, job_id, STAGES)
        reporter.enter("pretraining")
        reporter.update((0.2 - 0.02) / 0.45, force=True)  # 0.2 of the whole job
        expect(row.locator('[data-field="percent"]')).to_have_text("20%")
        expect(row.locator('[data-field="stage"]')).to_have_text("pretraining")
        reporter.enter("finetuning")
        reporter.update((0.7 - 0.47) / 0.35, force=True)  # 0.7 of the whole job
        expect(row.locator('[data-field="percent"]')).to_have_text("70%")
        expect(row.locator('[data-field="stage"]')).to_have_text("finetuning")
        width = row.locator(".bar-fill").evaluate("el => el.style.width")
        assert width == "70%", width

        # The loss curves of the finished job (click its row), axes labelled.
        page.locator("#jobs-table tbody tr").nth(1).click()
        expect(page.locator(".job-detail figure")).to_have_count(2)
        expect(page.locator(".job-detail svg.chart").first).to_contain_text("training step")
        expect(page.locator(".job-detail")).to_contain_text("candidate (v2)")

        # Traffic charts.
        assert page.locator("#stats svg.chart rect").count() > 20
        expect(page.locator("#stats")).to_contain_text("mean confidence")

        # The versions with lineage, and a rollback with the admin key.
        expect(page.locator("#versions-table tbody tr")).to_have_count(2)
        expect(page.locator('tr[data-version="2"]')).to_contain_text("rejected")
        expect(page.locator('tr[data-version="2"] td').nth(3)).to_have_text("v1")  # parent
        page.click('button[data-activate="2"]')
        expect(page.locator('tr[data-version="2"]')).to_have_class(ACTIVE_ROW)
        expect(page.locator("#active .version-big")).to_have_text("v2")
        page.click('button[data-activate="1"]')  # and back: the screenshot shows v1 serving
        expect(page.locator('tr[data-version="1"]')).to_have_class(ACTIVE_ROW)
        expect(page.locator("#activate-error")).to_be_empty()

        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert SECRET not in shot.name and shot.stat().st_size > 20_000
    results = ROOT / "bench-results"
    results.mkdir(exist_ok=True)
    shutil.copy(shot, results / "dashboard.png")
    assert errors == [], errors


def test_active_fragment_says_which_form_serves_and_its_bounds(client: TestClient):
    """What runs the model in this process, why, and its micro-batch bounds, as
    /models/active says."""
    admin = {"X-API-Key": ADMIN_KEY}
    active = client.get("/models/active", headers=admin).json()
    fragment = client.get("/dashboard/fragments/active", headers=admin).text
    assert f'data-served-form="{active["served_form"]}"' in fragment
    assert active["served_form_reason"] in fragment
    bounds = active["batching"]
    assert f"up to {bounds['max_texts']} texts, {bounds['max_tokens']} tokens" in fragment
