"""Prometheus metrics of an API process.

Two kinds: what the API processes do (requests, micro-batches, queues, the confidence of
their answers) is counted as it happens; what the store holds (pseudo-labels, jobs, the
active model) is read at scrape time by `StoreCollector`, from cheap queries cached for a
few seconds, so a scrape never scans a big table.

Several API processes behind one port (API_PROCESSES) share their counts through
prometheus_client's multiprocess mode: `pfp api` points PROMETHEUS_MULTIPROC_DIR at a fresh
folder before the processes start, each writes its figures there, and whichever process
answers a scrape reports them all (counters summed; what each process serves, per `pid`).
The process_* figures of the process collector are not reported in that mode.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import (
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.ml.serving_forms import Form
from app.store import versions
from app.store.database import Store
from app.store.jobs import FINISHED
from app.store.tables import Job, PseudoLabel, RetentionRun

log = logging.getLogger(__name__)

REQUESTS = Counter(
    "pfp_http_requests_total", "HTTP requests by route and status", ["method", "route", "status"]
)
LATENCY = Histogram(
    "pfp_http_request_seconds",
    "HTTP request latency by route",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TEXTS_LABELED = Counter("pfp_texts_labeled_total", "Texts labeled and stored", ["model_version"])
SERVED_VERSION = Gauge(
    "pfp_served_model_version", "Model version this process serves", multiprocess_mode="liveall"
)
SERVED_FORM = Gauge(
    "pfp_served_form",
    f"1 for the form of the model this process serves ({', '.join(Form)})",
    ["form"],
    multiprocess_mode="liveall",
)
BATCH_BOUND = Gauge(
    "pfp_inference_batch_bound",
    "The micro-batch bounds this process serves with (texts, tokens per forward pass): "
    "measured for the model when loaded, or set",
    ["bound"],
    multiprocess_mode="liveall",
)
BATCH_TEXTS = Histogram(
    "pfp_inference_batch_texts",
    "Texts per forward pass of the model server's micro-batcher",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
QUEUE_TEXTS = Gauge(
    "pfp_inference_queue_texts",
    "Texts accepted by the model server and not yet answered (INFER_QUEUE_LIMIT bounds it)",
    multiprocess_mode="livesum",
)
WRITER_PENDING = Gauge(
    "pfp_store_writer_pending_requests",
    "Requests whose pseudo-labels wait to be committed",
    multiprocess_mode="livesum",
)
ISOLATED_FAILURES = Counter(
    "pfp_isolated_failures_total",
    "Requests that failed inside a shared batch and were failed alone, the rest of the "
    "batch answered: by where (model: scoring; store: the store writer's commit)",
    ["where"],
)
CONFIDENCE = Histogram(
    "pfp_pseudo_label_confidence",
    "Confidence of the answered (and stored) pseudo-labels, by model version and label",
    ["model_version", "label"],
    buckets=(0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99),
)

JOB_STATUSES = ("queued", "running", *FINISHED)
# A finished job ends one of these ways: its candidate published or rejected, or no candidate.
JOB_OUTCOMES = ("published", "rejected", "failed", "cancelled")
ACTIVE_MODEL_LABELS = ("version", "labels", "job_id", "parent_version")
# Store figures are re-read at most this often, however many scrapers ask.
STORE_CACHE_SECONDS = 5.0
JOB_DURATION_BUCKETS = (60.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0)


class MetricsMiddleware:
    """Counts and times every request under its route template (not the raw path, which
    would make one series per job id)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", "unmatched")
            REQUESTS.labels(scope["method"], name, str(status)).inc()
            LATENCY.labels(scope["method"], name).observe(time.perf_counter() - start)


# -- what the store holds -------------------------------------------------------------


@dataclass
class StoreSnapshot:
    """What `StoreCollector` read from the store at one moment."""

    pseudo_labels: int = 0
    jobs: dict[str, int] = field(default_factory=dict)
    # outcome -> durations in seconds (started -> finished) of finished jobs
    job_durations: dict[str, list[float]] = field(default_factory=dict)
    active: dict[str, str] | None = None


def job_outcome(status: str, promoted: bool | None) -> str:
    if status == "succeeded":
        return "published" if promoted else "rejected"
    return status


def read_snapshot(store: Store) -> StoreSnapshot:
    """A few cheap queries: max(id) from the pseudo-labels' primary key less the rows
    retention deleted (never a count of the big table), the jobs table (one row per job:
    small), the active version's row."""
    snap = StoreSnapshot()
    with store.session() as session:
        # Ids are never reused, and only retention deletes (counting what it deleted), so
        # the highest id less those is the count, read from the primary key index and the
        # small table of runs (on PostgreSQL a rolled-back insert leaves a gap: an upper
        # bound).
        highest = session.scalar(select(func.max(PseudoLabel.id))) or 0
        removed = session.scalar(select(func.sum(RetentionRun.deleted))) or 0
        snap.pseudo_labels = max(0, highest - int(removed))
        snap.jobs = dict.fromkeys(JOB_STATUSES, 0)
        for status, count in session.execute(
            select(Job.status, func.count()).group_by(Job.status)
        ).all():
            snap.jobs[status] = count
        snap.job_durations = {outcome: [] for outcome in JOB_OUTCOMES}
        finished = session.execute(
            select(Job.status, Job.promoted, Job.started_at, Job.finished_at).where(
                Job.status.in_(FINISHED)
            )
        ).all()
        for status, promoted, started, ended in finished:
            if started is None or ended is None:
                continue  # cancelled while queued: it never ran
            seconds = max(0.0, (ended - started).total_seconds())
            snap.job_durations[job_outcome(status, promoted)].append(seconds)
        active = versions.active_version(session)
        if active is not None:
            row = versions.get_version(session, active)
            if row is not None:
                snap.active = {
                    "version": str(row.version),
                    "labels": ",".join(map(str, row.labels)),
                    "job_id": row.job_id or "",
                    "parent_version": "" if row.parent_version is None else str(row.parent_version),
                }
    return snap


def _histogram(
    values: Iterable[float], buckets: tuple[float, ...]
) -> tuple[list[tuple[str, float]], float]:
    values = list(values)
    cumulative = [(repr(b), float(sum(v <= b for v in values))) for b in buckets]
    return [*cumulative, ("+Inf", float(len(values)))], float(sum(values))


class StoreCollector(Collector):
    """Store-wide figures, read at scrape time and cached for `cache_seconds`: every API
    replica reports the same numbers (query them with max(), not sum())."""

    def __init__(self, store: Store, cache_seconds: float = STORE_CACHE_SECONDS) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._snapshot: StoreSnapshot | None = None
        self._read_at = float("-inf")
        self._reachable = True

    def snapshot(self) -> StoreSnapshot | None:
        with self._lock:
            if time.monotonic() - self._read_at >= self.cache_seconds:
                try:
                    self._snapshot = read_snapshot(self.store)
                    self._reachable = True
                except Exception as exc:  # a scrape must answer while the store is away
                    if self._reachable:
                        log.warning("metrics: the store did not answer (%s)", exc)
                    self._reachable = False
                self._read_at = time.monotonic()
            return self._snapshot

    def describe(self) -> Iterator[Metric]:
        """Every family this collector can yield, whatever the store holds now."""
        yield GaugeMetricFamily("pfp_store_up", "")
        yield GaugeMetricFamily("pfp_pseudo_labels_stored", "")
        yield GaugeMetricFamily("pfp_jobs", "", labels=["status"])
        yield HistogramMetricFamily("pfp_job_duration_seconds", "", labels=["outcome"])
        yield GaugeMetricFamily("pfp_active_model_version", "")
        yield InfoMetricFamily("pfp_active_model", "", labels=list(ACTIVE_MODEL_LABELS))

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        yield GaugeMetricFamily(
            "pfp_store_up", "1 if the last read of the store answered", value=self._reachable
        )
        if snap is None:
            return
        yield GaugeMetricFamily(
            "pfp_pseudo_labels_stored", "Pseudo-labels in the store", value=snap.pseudo_labels
        )
        jobs = GaugeMetricFamily(
            "pfp_jobs", "Retraining jobs in the store by status", labels=["status"]
        )
        for status, count in snap.jobs.items():
            jobs.add_metric([status], count)
        yield jobs
        durations = HistogramMetricFamily(
            "pfp_job_duration_seconds",
            "Run time of finished jobs (start to end) by outcome",
            labels=["outcome"],
        )
        for outcome, values in snap.job_durations.items():
            buckets, total = _histogram(values, JOB_DURATION_BUCKETS)
            durations.add_metric([outcome], buckets, total)
        yield durations
        if snap.active is not None:
            yield GaugeMetricFamily(
                "pfp_active_model_version",
                "Version active in the store (what every process should serve)",
                value=int(snap.active["version"]),
            )
            yield InfoMetricFamily(
                "pfp_active_model", "The model active in the store", value=snap.active
            )


def show_served(version: int, form: Form, max_texts: int, max_tokens: int) -> None:
    """Set this process's served-model gauges (after a load or a swap): every form has a
    series, 0 where not served, so a panel can key on them."""
    SERVED_VERSION.set(version)
    for name in Form:
        SERVED_FORM.labels(name).set(1 if name == form else 0)
    BATCH_BOUND.labels("texts").set(max_texts)
    BATCH_BOUND.labels("tokens").set(max_tokens)


class _ProcessMetrics(Collector):
    """The API processes' figures: this process's registry, or, with several processes,
    what all of them wrote to PROMETHEUS_MULTIPROC_DIR."""

    def collect(self) -> Iterator[Metric]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            shared = CollectorRegistry()
            multiprocess.MultiProcessCollector(shared)  # type: ignore[no-untyped-call]
            yield from shared.collect()
        else:
            yield from REGISTRY.collect()


def metrics_registry(store: Store) -> CollectorRegistry:
    """What one API app's /metrics shows: the process's metrics and its store's.

    Per app rather than global because the store is the app's (tests build many apps in
    one process, each on its own store)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ProcessMetrics())
    registry.register(StoreCollector(store, STORE_CACHE_SECONDS))
    return registry
