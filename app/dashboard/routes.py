"""The operator dashboard: one public HTML shell and server-rendered fragments behind keys.

A browser cannot send an API key on navigation, so the page at /dashboard holds no stored
data at all: its script asks for the key once, keeps it in sessionStorage, and fetches the
fragments below (and the JSON API) with the key in a header. Each fragment takes the
same key as the JSON endpoint it summarises: versions need any key, jobs and traffic an
admin key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from app.api.deps import ADMIN, READER, ServerDep, StoreDep
from app.api.routes.jobs import job_view
from app.api.routes.stats import load_label_stats
from app.api.schemas import ModelView, ReviewItemView
from app.core.times import iso_utc
from app.dashboard import charts
from app.store import jobs, reviews, stats, versions

HERE = Path(__file__).resolve().parent
JOBS_SHOWN = 20  # the jobs table and the script's polling of GET /jobs show the same number

# The shell loads its script and styles from here only; nothing inline can run.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["utc"] = iso_utc  # every time on the page as the API gives it


def install_dashboard(app: FastAPI) -> None:
    """Add the page, its fragments and its static files to the app."""
    app.include_router(router)
    app.mount("/dashboard/static", StaticFiles(directory=HERE / "static"), name="dashboard-static")


def _render(request: Request, template: str, **context: Any) -> HTMLResponse:
    response = templates.TemplateResponse(request, template, context)
    response.headers.update(SECURITY_HEADERS)
    return response


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard_page(request: Request) -> HTMLResponse:
    """The page shell: layout and script only, no stored data (it needs no key)."""
    return _render(request, "dashboard.html", jobs_shown=JOBS_SHOWN)


@router.get("/dashboard/fragments/active", response_class=HTMLResponse, dependencies=READER)
def active_fragment(request: Request, store: StoreDep, server: ServerDep) -> HTMLResponse:
    """The active model and its metrics."""
    with store.session() as session:
        active = versions.active_version(session)
        row = versions.get_version(session, active) if active is not None else None
        model = ModelView.model_validate(row) if row else None
    current = server.current
    served = current.version if current else None
    return _render(
        request, "active.html", model=model, active=active, served=served, current=current
    )


@router.get("/dashboard/fragments/versions", response_class=HTMLResponse, dependencies=READER)
def versions_fragment(request: Request, store: StoreDep) -> HTMLResponse:
    """Every served version with lineage, metrics, decision and who taught it, then the
    teacher versions, each with an activate button."""
    with store.session() as session:
        active = versions.active_version(session)
        rows = [ModelView.model_validate(row) for row in versions.list_versions(session)]
    for row in rows:
        row.active = row.version == active
        row.role = "teacher" if row.decision == versions.TEACHER else "served"
        row.taught_by = row.lineage.get("taught_by")
    # Teachers apart: they teach the served versions, and no job serves them.
    teachers = [row for row in rows if row.role == "teacher"]
    served = [row for row in rows if row.role == "served"]
    return _render(request, "versions.html", versions=served, teachers=teachers)


def _loss_charts(history: dict[str, Any]) -> list[tuple[str, Any]]:
    """One chart per recorded stage: the total loss and, for pre-training, its two parts."""
    names = {"loss": "total", "task_loss": "task", "mlm_loss": "MLM"}
    titles = {"pretraining": "Joint pre-training", "finetuning": "Fine-tuning on gold"}
    out = []
    for stage, curves in history.items():
        if not isinstance(curves, dict) or not curves.get("step"):
            continue
        steps = curves["step"]
        series = [
            charts.Series(names.get(key) or key, steps, values, charts.color_for(i))
            for i, (key, values) in enumerate(
                (k, v) for k, v in curves.items() if k != "step" and isinstance(v, list)
            )
        ]
        title = titles.get(stage, stage)
        svg = charts.line_chart(
            series, title=f"{title}: loss per step", x_label="training step", y_label="loss"
        )
        out.append((title, svg))
    return out


@router.get("/dashboard/fragments/jobs", response_class=HTMLResponse, dependencies=ADMIN)
def jobs_fragment(request: Request, store: StoreDep, selected: str | None = None) -> HTMLResponse:
    """The newest jobs with their progress, and the loss curves of the selected one."""
    with store.session() as session:
        rows = [job_view(session, j) for j in jobs.list_jobs(session, JOBS_SHOWN)]
    chosen = next((j for j in rows if j.id == selected), None)
    if chosen is None:  # default: the newest job that has curves to show, else the newest
        chosen = next((j for j in rows if j.history), rows[0] if rows else None)
    return _render(
        request,
        "jobs.html",
        jobs=rows,
        chosen=chosen,
        curves=_loss_charts(chosen.history) if chosen else [],
    )


@router.get("/dashboard/fragments/stats", response_class=HTMLResponse, dependencies=ADMIN)
def stats_fragment(
    request: Request, store: StoreDep, bucket: stats.Bucket = "hour"
) -> HTMLResponse:
    """Label distribution and mean confidence over time (the figures of /stats/labels)."""
    figures = load_label_stats(store, bucket)
    starts = [b.start for b in figures.buckets]
    width = stats.BUCKET_WIDTH[bucket]
    # Confidence points sit mid-bucket, so they line up with the bars above them.
    middle = [(b.start + width / 2).timestamp() for b in figures.buckets]
    since, until = figures.since, figures.until
    per = "hour" if bucket == "hour" else "day"
    distribution = charts.stacked_bars(
        starts,
        [b.counts for b in figures.buckets],
        figures.labels,
        bar_width=width,
        since=since,
        until=until,
        title=f"Pseudo-labels per {per}, by label",
        x_label="time (UTC)",
        y_label="pseudo-labels",
    )
    confidence = charts.line_chart(
        [
            charts.Series(
                "", middle, [b.mean_confidence for b in figures.buckets], charts.color_for(0)
            )
        ],
        title=f"Mean confidence per {per}",
        x_label="time (UTC)",
        y_label="mean confidence",
        y_range=(0.0, 1.0),
        x_range=(since.timestamp(), until.timestamp()),
        x_ticks=charts.time_axis(since, until),
        empty_message="no pseudo-labels in this window",
    )
    totals = {label: 0 for label in figures.labels}
    for b in figures.buckets:
        for label, n in b.counts.items():
            totals[label] = totals.get(label, 0) + n
    return _render(
        request,
        "stats.html",
        figures=figures,
        bucket=bucket,
        distribution=distribution,
        confidence=confidence,
        totals=totals,
        colors={label: charts.color_for(i) for i, label in enumerate(figures.labels)},
    )


@router.get("/dashboard/fragments/review", response_class=HTMLResponse, dependencies=ADMIN)
def review_fragment(
    request: Request,
    store: StoreDep,
    queue: Literal["uncertainty", "disagreement"] = "uncertainty",
) -> HTMLResponse:
    """The next open item of a review queue, a button per class, and the queue's progress
    (the same routes as `pfp review` answer it: POST /review/items/{id}/label)."""
    with store.session() as session:
        counts = reviews.counts(session)[queue]
        first = reviews.list_items(session, queue, limit=1)
        item = ReviewItemView.model_validate(first[0]) if first else None
        try:
            classes = reviews.active_classes(session)
        except reviews.NoClasses:
            classes = []
    return _render(request, "review.html", queue=queue, counts=counts, item=item, classes=classes)
