"""`python -m bench [--quick] [--parts 1,3]`: measure the service against its baselines.

1. ceiling: the bare batched forward pass, in-process, per batch size, for each form of
   the model (fp32, int8 dynamic quantization, torch.compile, ONNX Runtime), with the
   test macro-F1 of each;
2. naive: a transformers pipeline behind FastAPI, one request at a time;
3. ours: `/label` and `/label/batch` at several concurrencies, from a separate client;
4. swap under load: a model published while two API processes serve;
5. serving while a training job runs on the same machine, per way the worker yields;
6. training: our joint step against a naive one on the same batches;
7. tuning: `/label` with the self-tuned micro-batch bounds against fixed ones, and per
   layout of API processes x threads, a fresh API each.

The service is started as a user would (`pfp api`, `pfp worker`), on loopback. Results go
to bench-results/bench.json, a Markdown table on stdout and, for a full run, the
benchmark table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import torch

from app.core.config import Settings
from app.ml.serving_forms import Form, read_forms
from app.registry import publish, version_dir
from app.serving.form_choice import candidate_forms
from app.store import versions
from app.store.database import Store
from app.store.gold_files import demo_gold
from bench.cpu_split import cpu_per_request
from bench.forms import log
from bench.layouts import batch1_alone, best_within, layouts, measure_layouts
from bench.load import LoadResult, run_load
from bench.tiny import build_tiny_bert
from bench.training import measure_training

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-admin-key"
# The names part 1 gives the forms an API process serves (`served_form`).
PART1_NAMES = {
    Form.ONNX_FP32: "onnxruntime",
    Form.ONNX_INT8: Form.ONNX_INT8.value,
    Form.TORCH_BF16: Form.TORCH_BF16.value,
    Form.TORCH_FP32: "fp32",
    Form.TORCH_INT8: "int8",
}
HEADERS = {"X-API-Key": KEY}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """Processes started with `python -m app.cli ...` over one data folder."""

    def __init__(self, env: dict[str, str], out: Path) -> None:
        self.env = env
        self.out = out
        self.procs: list[subprocess.Popen[bytes]] = []
        self.api_pids: dict[str, int] = {}  # url -> the pid of `pfp api` serving it

    def start(
        self, name: str, *args: str, prefix: Sequence[str] = (), **env: str
    ) -> subprocess.Popen[bytes]:
        """Start `python -m app.cli ARGS`, behind `prefix` (a command such as `nice -n 19`)."""
        handle = (self.out / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "app.cli", *args],
            cwd=ROOT,
            env={**self.env, **env},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def api(self, **env: str) -> str:
        port = free_port()
        proc = self.start(f"api-{port}", "api", "--port", str(port), **env)
        url = f"http://127.0.0.1:{port}"
        # Ready when every API process serves, not the first: a sibling still loading (and
        # measuring its bounds) takes no connections, and a load started then measures
        # one process for its first seconds (a fixed-bounds run served half as much).
        serving: set[int] = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"api exited; see {self.out}/api-{port}.log")
            try:
                # A new connection each time: the kernel picks a process that listens.
                active = httpx.get(f"{url}/models/active", headers=HEADERS, timeout=2).json()
                if active.get("served_version") is not None:
                    serving.add(active["process"]["pid"])
                if len(serving) >= active["process"]["api_processes"]:
                    self.api_pids[url] = proc.pid
                    return url
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"api not ready: {len(serving)} process(es) serving")

    def stop_one(self, proc: subprocess.Popen[bytes]) -> None:
        """Warm shutdown through the main process (Celery stops its own pool); SIGKILL to
        the whole group if that takes too long."""
        import signal

        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        import signal

        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def publish_copy(settings: Settings, store: Store) -> int:
    """Publish a copy of the active model as a new version (what a winning job does)."""
    with store.session() as session:
        active = versions.active_version(session)
        assert active is not None
        labels = list(versions.get_version(session, active).labels)  # type: ignore[union-attr]
    source = version_dir(settings, active)

    def copy(folder: Path) -> None:
        shutil.copytree(source, folder, dirs_exist_ok=True)

    published = publish(
        settings,
        store,
        copy,
        labels=labels,
        champion=active,
        wins=True,
        reason="bench: swap under load",
        job_id=None,
        metrics={},
        lineage={"kind": "bench-copy"},
    )
    assert published.promoted, published.conflict
    return published.version


def latency_summary(load: LoadResult, since: float = 0.0, until: float = 1e9) -> float:
    window = [
        lat
        for (t, _, _), lat in zip(load.versions, load.latencies, strict=True)
        if since <= t <= until
    ]
    if not window:
        return float("nan")
    window.sort()
    return round(window[min(len(window) - 1, int(0.99 * len(window)))] * 1000, 1)


# Ways a worker can share the machine with serving: the first is the baseline, the last
# the service's way (pausing between training steps while serving is busy). The others are
# the operating system's ways, applied from outside: measured, they do not protect serving,
# so the service does not offer them as settings.
NO_PAUSE = {"WORKER_MIN_SHARE": "1"}
WORKER_SETUPS: dict[str, tuple[list[str], dict[str, str]]] = {
    "nice 0": ([], NO_PAUSE),
    "nice 19": (["nice", "-n", "19"], NO_PAUSE),
    "SCHED_IDLE, 1 thread": (
        ["chrt", "--idle", "0", "nice", "-n", "19"],
        {**NO_PAUSE, "OMP_NUM_THREADS": "1"},
    ),
    "defaults: pauses while serving is busy": ([], {}),
}


class Bench:
    """The state the parts share: the service's processes, its settings and the data."""

    def __init__(self, quick: bool, out: Path) -> None:
        self.quick = quick
        self.out = out
        self.seconds = 1.0 if quick else 6.0
        self.conc = 8 if quick else 32
        self.base = build_tiny_bert(out / "tiny-base") if quick else None
        env_values: dict[str, Any] = {
            "DATA_DIR": out / "data",
            "ADMIN_API_KEYS": KEY,
            # The full run serves the first model a user gets (one epoch on the demo data):
            # what int8 costs in quality is only meaningful on a fully trained model.
            "BOOTSTRAP_MAX_STEPS": 10 if quick else 0,
            "MAX_LENGTH": 64,
            "SWAP_POLL_SECONDS": 1,
            "HF_HUB_OFFLINE": 1,
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": 1,
        }
        if quick:
            # A tiny model and 600 demo tweets: the smoke test checks that every part runs.
            env_values["BASE_MODEL"] = self.base
            gold_path = out / "gold.jsonl"
            with gold_path.open("w") as handle:
                for item in demo_gold(13)[:600]:
                    handle.write(json.dumps({"text": item.text, "label": item.label}) + "\n")
            env_values["BOOTSTRAP_GOLD"] = gold_path
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
            **{k: str(v) for k, v in env_values.items()},
        }
        self.settings = Settings.model_validate(
            {k.lower(): v for k, v in self.env.items() if k.lower() in Settings.model_fields}
        )
        self.gold = demo_gold(13)
        self.texts = [g.text for g in self.gold if g.split == "train"]
        self.service = Service(self.env, out)
        self.store: Store | None = None
        self.url: str | None = None

    def bootstrap(self, reuse: bool = False) -> None:
        self.store = Store(self.settings.store_url)
        if reuse and (version_dir(self.settings, 1) / "config.json").is_file():
            log("serving the model of the previous run (--reuse-model)")
            return
        self.store.dispose()
        log("bootstrapping a model to serve (a short fine-tune)")
        boot = self.service.start("bootstrap", "bootstrap")
        if boot.wait(1200) != 0:
            raise RuntimeError(f"bootstrap failed; see {self.out}/bootstrap.log")
        self.store = Store(self.settings.store_url)

    def api(self) -> str:
        if self.url is None:
            self.url = self.service.api()
            run_load([self.url], "/label", self.texts, 8, 1.0, headers=HEADERS)  # warm-up
        return self.url

    def load(
        self, path: str, concurrency: int, batch: int = 0, url: str | None = None, **kw: Any
    ) -> LoadResult:
        """`path` under load from the bench's API (or `url`) for the usual time."""
        urls = [url or self.api()]
        return run_load(urls, path, self.texts, concurrency, self.seconds, batch, HEADERS, **kw)

    # -- 1 ----------------------------------------------------------------------------

    def ceiling(self) -> dict[str, Any]:
        """Every form of the model: texts/s per batch size and test macro-F1, measured in
        a process of its own, so that what the forms leave behind (compiler workers,
        ONNX Runtime threads) does not load the client of the later parts."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from bench.forms import measure_forms

        test = [g for g in self.gold if g.split == "test"][: 200 if self.quick else 1440]
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            forms = pool.submit(
                measure_forms,
                version_dir(self.settings, 1),
                self.settings.max_length,
                self.texts,
                [(g.text, g.label) for g in test],
                [1, 8, 32] if self.quick else [1, 8, 16, 32, 64],
                self.seconds / 2,
                self.out / "onnx",
            ).result()
        folder = version_dir(self.settings, 1)
        # The forms an API process may serve this version in here, by the service's own
        # rules (the ONNX form its gate chose, and bf16 where its gate lets it: the API
        # measures them against each other at load and serves the faster).
        candidates = [c.form for c in candidate_forms(self.settings, folder)]
        if self.settings.infer_backend != "onnxruntime":
            # The torch forms: one process, as measured above.
            served = PART1_NAMES[candidates[0]]
            return {"forms": forms, "served": served, "test_n": len(test), **forms[served]}
        # Those and fp32: the machine's ceiling of each, every layout of processes x
        # threads, all processes at once.
        s = self.settings
        cores = os.cpu_count() or 1
        sizes = [1, 8, 16] if self.quick else [1, 8, 16, 32]

        def ceiling_of(form: Form) -> dict[str, Any]:
            log(f"1. ceiling of the machine: {form}, every layout")
            args = (s.max_length, self.texts, cores, sizes, self.seconds / 2)
            return measure_layouts(folder, form, *args)

        by_layout = {
            form: ceiling_of(form) for form in dict.fromkeys([*candidates, Form.ONNX_FP32])
        }
        # The service is held to the ceiling of the form it serves: what its API says.
        active = self.active_model()
        served = Form(active["served_form"])
        if served not in by_layout:
            by_layout[served] = ceiling_of(served)
        best = by_layout[served]["best"]
        batch1 = batch1_alone(
            folder, served, s.max_length, self.texts, best["threads"], self.seconds / 2
        )
        return {
            "forms": forms,
            "forms_record": read_forms(folder),
            "served": served,
            "served_reason": active["served_form_reason"],
            "forms_compared": active["forms_compared"],
            "test_n": len(test),
            "layouts": by_layout,
            "best_layout": best,
            "best_batch": best["batch"],
            "best_texts_per_s": best["texts_per_s"],
            "fp32_best_texts_per_s": by_layout[Form.ONNX_FP32]["best"]["texts_per_s"],
            "by_batch": forms[PART1_NAMES[served]]["by_batch"],
            "batch1_ms": batch1,
        }

    # -- 2 ----------------------------------------------------------------------------

    def naive(self) -> dict[str, Any]:
        log("2. naive baseline: pipeline behind FastAPI, one request at a time")
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bench.naive_app:app", "--port", str(port)]
            + ["--log-level", "warning"],
            cwd=ROOT,
            env={**self.env, "NAIVE_MODEL_DIR": str(version_dir(self.settings, 1))},
            stdout=(self.out / "naive.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    httpx.post(f"{url}/label", json={"text": "warm"}, timeout=2)
                    break
                except httpx.HTTPError:
                    time.sleep(0.3)
            return run_load([url], "/label", self.texts, self.conc, self.seconds).summary()
        finally:
            proc.terminate()
            proc.wait(30)

    # -- 3 ----------------------------------------------------------------------------

    def ours(self) -> dict[str, list[dict[str, Any]]]:
        log("3. our service: /label and /label/batch per concurrency")
        rows: dict[str, list[dict[str, Any]]] = {"/label": [], "/label/batch": []}
        for c in [1, 8] if self.quick else [1, 8, 32, 64]:
            if c == self.conc:
                # What each request costs the cores beside the forward pass, by thread.
                load, split = cpu_per_request(
                    self.service.api_pids[self.api()],
                    lambda: self.load("/label", self.conc),
                    lambda load: load.ok,
                )
                rows["/label"].append({**load.summary(), "cpu_ms_per_request": split})
            else:
                rows["/label"].append(self.load("/label", c).summary())
            rows["/label/batch"].append(self.load("/label/batch", c, batch=16).summary())
        return rows

    # -- 4 ----------------------------------------------------------------------------

    def swap(self) -> dict[str, Any]:
        log("4. swap under load: a model published mid-run while two API replicas serve")
        assert self.store is not None
        urls = [self.api(), self.service.api()]
        run_load(urls[1:], "/label", self.texts, 8, 1.0, headers=HEADERS)  # warm-up
        published: dict[str, float] = {}

        def publish(elapsed: float) -> None:
            assert self.store is not None
            began = time.perf_counter()
            published["version"] = publish_copy(self.settings, self.store)
            # From the activation (the end of publishing) on: what API processes control.
            published["at"] = elapsed + time.perf_counter() - began

        swap = run_load(
            urls, "/label", self.texts, self.conc, self.seconds * 2.5, 0, HEADERS, during=publish
        )
        new = published["version"]
        first_new = {
            u: min((t for t, uu, v in swap.versions if uu == u and v == new), default=None)
            for u in urls
        }
        swap_done = max((t for t in first_new.values() if t is not None), default=float("nan"))
        return {
            **swap.summary(),
            "published_version": new,
            "seconds_to_first_new_answer": {
                u: (round(t - published["at"], 2) if t else None) for u, t in first_new.items()
            },
            "p99_steady_ms": latency_summary(swap, 0, published["at"]),
            "p99_during_swap_ms": latency_summary(swap, published["at"], swap_done + 1.0),
        }

    # -- 5 ----------------------------------------------------------------------------

    def while_training(self) -> dict[str, Any]:
        """c=8 on /label with no job, then while a job trains under each WORKER_SETUPS
        entry (the job is cancelled once measured: only its training steps matter)."""
        log("5. serving while a training job runs")
        url = self.api()
        results: dict[str, Any] = {}
        idle: list[LoadResult] = []
        # Pseudo-labels for the job to pre-train on.
        httpx.post(
            f"{url}/label/batch", json={"texts": self.texts[:200]}, headers=HEADERS, timeout=120
        )
        names = list(WORKER_SETUPS)
        setups = (
            {n: WORKER_SETUPS[n] for n in (names[0], names[-1])} if self.quick else WORKER_SETUPS
        )
        for name, setup in setups.items():
            # Idle again before each setup: the machine drifts over minutes.
            idle.append(self.load("/label", 8))
            log(f"5. worker: {name}")
            prefix, env = setup
            worker = self.service.start(f"worker-{len(results)}", "worker", prefix=prefix, **env)
            try:
                job = httpx.post(
                    f"{url}/jobs",
                    headers=HEADERS,
                    json={"pretrain_max_steps": 1000, "finetune_max_steps": 1000, "max_length": 64},
                ).json()
                job_url = f"{url}/jobs/{job['id']}"
                # Measure once the job is a few seconds into its pre-training (its first
                # steps pay for lazy start-up), for twice the usual time.
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    view = httpx.get(job_url, headers=HEADERS).json()
                    if view["status"] not in ("queued", "running"):
                        raise RuntimeError(f"the bench job ended early: {view}")
                    if view["stage"] == "pretraining":
                        break
                    time.sleep(0.5)
                time.sleep(1 if self.quick else 4)
                results[name] = run_load(
                    [url], "/label", self.texts, 8, self.seconds * 2, 0, HEADERS
                ).summary()
                results[name]["setup"] = {"command": " ".join(prefix), **env}
                httpx.post(f"{job_url}/cancel", headers=HEADERS)
                while httpx.get(job_url, headers=HEADERS).json()["status"] == "running":
                    time.sleep(0.5)
            finally:
                self.service.stop_one(worker)
        merged = LoadResult(8, sum(r.seconds for r in idle), 1)
        for r in idle:
            merged.latencies += r.latencies
            for status, n in r.statuses.items():
                merged.statuses[status] = merged.statuses.get(status, 0) + n
            merged.errors += r.errors
        return {"idle": merged.summary(), **results}

    def active_model(self) -> dict[str, Any]:
        """What the bench's API says it serves (/models/active): the form, why, the bounds."""
        active: dict[str, Any] = httpx.get(f"{self.api()}/models/active", headers=HEADERS).json()
        return active

    # -- 7 ----------------------------------------------------------------------------

    def tuning(self) -> dict[str, Any]:
        """/label at the top concurrency, a fresh API per setting: the self-tuned bounds
        (the default) against fixed ones, and each layout of API processes x threads."""
        log("7. self-tuned batching against fixed bounds, and the API layouts")
        cores = os.cpu_count() or 1
        default: tuple[str, dict[str, str]] = ("self-tuned bounds, default layout", {})
        others: list[tuple[str, dict[str, str]]] = []
        for n in [8] if self.quick else [4, 8, 16, 32]:
            fixed = {"INFER_MAX_BATCH": str(n), "INFER_MAX_BATCH_TOKENS": "4096"}
            others.append((f"fixed bounds: {n} texts", fixed))
        if "bf16" in self.active_model()["served_form"]:
            # What serving bf16 buys over the ONNX form the gate would serve without it.
            others.append(
                ("ONNX form only (INFER_BF16=never), self-tuned", {"INFER_BF16": "never"})
            )
        default_layout = self.settings.api_layout
        for processes, threads in layouts(cores):
            if (processes, threads) != default_layout:
                layout = {"API_PROCESSES": str(processes), "TORCH_THREADS": str(threads)}
                others.append((f"layout {processes} x {threads}, self-tuned", layout))
        # The default between every two others: the machine drifts by tens of percent
        # over minutes, and the default's runs show by how much.
        configs: list[tuple[str, dict[str, str]]] = [default]
        for start in range(0, len(others), 2):
            configs += [*others[start : start + 2], default]
        rows: list[dict[str, Any]] = []
        for name, env in configs:
            url = self.service.api(**env)
            proc = self.service.procs[-1]
            try:
                run_load([url], "/label", self.texts, 8, 1.0, headers=HEADERS)  # warm-up
                active = httpx.get(f"{url}/models/active", headers=HEADERS).json()
                row = self.load("/label", self.conc, url=url).summary()
                row |= {"setting": name, "batching": active["batching"], **active["process"]}
                rows.append(row)
            finally:
                self.service.stop_one(proc)
        return {"rows": rows}

    # -- 6 ----------------------------------------------------------------------------

    def training(self) -> dict[str, Any]:
        log("6. training throughput: joint step against a naive one")
        from app.core.config import packaged_base_model

        return measure_training(
            self.base or packaged_base_model(),
            self.texts,
            2 if self.quick else 4,
            8 if self.quick else 32,
            64,
        )


PARTS = {
    1: "ceiling",
    2: "naive",
    3: "service",
    4: "swap",
    5: "while_training",
    6: "training",
    7: "tuning",
}


def goals(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The serving goals against what this run measured (only those its parts measured)."""
    out: list[dict[str, Any]] = []

    def goal(name: str, value: float, target: str, met: bool) -> None:
        out.append({"goal": name, "measured": round(value, 2), "target": target, "met": met})

    label_rows = {row["concurrency"]: row for row in r.get("service", {}).get("/label", [])}
    c32 = label_rows.get(32) or label_rows.get(8)
    ceiling = r.get("ceiling", {})
    if ceiling and c32:
        ratio = c32["texts_per_s"] / ceiling["best_texts_per_s"]
        name = f"/label c={c32['concurrency']} / machine ceiling ({ceiling['served']})"
        goal(name, ratio, ">= 0.90", ratio >= 0.9)
        if "layouts" in ceiling:
            # The same, against the passes c one-text requests can fill at once.
            reachable = best_within(
                ceiling["layouts"][ceiling["served"]]["rows"], c32["concurrency"]
            )
            ratio = c32["texts_per_s"] / reachable["texts_per_s"]
            name = (
                f"/label c={c32['concurrency']} / ceiling with {c32['concurrency']} texts in "
                f"flight ({reachable['processes']} x {reachable['threads']}, batch "
                f"{reachable['batch']}: {reachable['texts_per_s']})"
            )
            goal(name, ratio, ">= 0.90", ratio >= 0.9)
    if "fp32_best_texts_per_s" in ceiling:
        ratio = ceiling["best_texts_per_s"] / ceiling["fp32_best_texts_per_s"]
        name = f"served form ({ceiling['served']}) / fp32 ONNX Runtime, machine ceilings"
        goal(name, ratio, ">= 1.7", ratio >= 1.7)
    # The quality of the form served: int8's or bf16's drop from fp32 on the dev set.
    kind = next((k for k in ("int8", "bf16") if k in ceiling.get("served", "")), None)
    drop = (ceiling.get("forms_record") or {}).get(f"{kind}_drop_points")
    if drop is not None:
        goal(f"{kind} dev macro-F1 drop from fp32 (points)", drop, "<= 0.5", drop <= 0.5)
    tuned = r.get("tuning", {}).get("rows", [])
    auto = [row["texts_per_s"] for row in tuned if row["setting"].startswith("self-tuned")]
    fixed = [row["texts_per_s"] for row in tuned if row["setting"].startswith("fixed")]
    if auto and fixed:
        ratio = statistics.fmean(auto) / max(fixed)
        goal("self-tuned / best fixed bounds (texts/s)", ratio, ">= 0.97", ratio >= 0.97)
    if "naive" in r and c32:
        ratio = c32["texts_per_s"] / r["naive"]["texts_per_s"]
        goal(f"/label c={c32['concurrency']} / naive", ratio, ">= 2", ratio >= 2)
    if "ceiling" in r and 1 in label_rows:
        extra = label_rows[1]["p50_ms"] - r["ceiling"]["batch1_ms"]
        goal("c=1 p50 - batch-1 forward (ms)", extra, "<= 5", extra <= 5)
    if "swap" in r:
        s = r["swap"]
        goal("failed requests during swap", s["failed"], "0", s["failed"] == 0)
        ratio = s["p99_during_swap_ms"] / s["p99_steady_ms"]
        goal("swap p99 / steady p99", ratio, "<= 2", ratio <= 2)
    if "training" in r:
        t = r["training"]
        goal("joint step / naive step (tokens/s)", t["speedup"], ">= 2", t["speedup"] >= 2)
    forms = r.get("ceiling", {}).get("forms", {})
    student = next((f for n, f in forms.items() if n.startswith("student") and "onnx" in n), None)
    full = forms.get("onnxruntime")
    if student and full and "unavailable" not in student and "unavailable" not in full:
        ratio = student["best_texts_per_s"] / full["best_texts_per_s"]
        goal("half-layer student / full model (texts/s)", ratio, "about 2", ratio >= 1.6)
    return out


def load_row(label: str, summary: dict[str, Any]) -> str:
    """One table row from a LoadResult summary."""
    s = summary
    return f"| {label} | {s['texts_per_s']} | {s['p50_ms']} | {s['p99_ms']} | {s['failed']} |"


def render(r: dict[str, Any]) -> str:
    lines = [
        "| measurement | texts/s | p50 ms | p99 ms | failed |",
        "| --- | --- | --- | --- | --- |",
    ]
    if "ceiling" in r and "layouts" in r["ceiling"]:
        c = r["ceiling"]
        b = c["best_layout"]
        f = c["layouts"][Form.ONNX_FP32]["best"]
        lines += [
            f"| ceiling of the machine: bare forward, {c['served']}, {b['processes']} x "
            f"{b['threads']} threads, batch {b['batch']} | {c['best_texts_per_s']} | | | |",
            f"| ceiling of the machine: bare forward, {Form.ONNX_FP32}, {f['processes']} x "
            f"{f['threads']} threads, batch {f['batch']} | {f['texts_per_s']} | | | |",
            f"| bare forward, {c['served']}, batch 1, one process of {b['threads']} "
            f"thread(s) | {round(1000 / c['batch1_ms'], 1)} | {c['batch1_ms']} | | |",
        ]
    elif "ceiling" in r:
        c = r["ceiling"]
        lines += [
            f"| ceiling: bare forward, {c['served']}, batch {c['best_batch']} "
            f"| {c['best_texts_per_s']} | | | |",
            f"| ceiling: bare forward, {c['served']}, batch 1 "
            f"| {c['by_batch'][1]['texts_per_s']} | {c['batch1_ms']} | | |",
        ]
    if "naive" in r:
        n = r["naive"]
        lines.append(load_row(f"naive pipeline, concurrency {n['concurrency']}", n))
    for path, rows in r.get("service", {}).items():
        for row in rows:
            lines.append(load_row(f"ours {path}, concurrency {row['concurrency']}", row))
    if "swap" in r:
        s = r["swap"]
        lines.append(load_row(f"swap under load (2 API processes, c={s['concurrency']})", s))
    for name, b in r.get("while_training", {}).items():
        label = "c=8, no job" if name == "idle" else f"c=8 while a job trains, worker {name}"
        lines.append(load_row(label, b))
    extra = [""]
    if "ceiling" in r:
        extra += ["| form of the model | best batch | texts/s | batch 1 ms | test macro-F1 |"]
        extra += ["| --- | --- | --- | --- | --- |"]
        for name, f in r["ceiling"]["forms"].items():
            if "unavailable" in f:
                extra.append(f"| {name} | unavailable: {f['unavailable']} | | | |")
            else:
                setup = f" (setup {f['setup_seconds']} s)" if f["setup_seconds"] else ""
                f1 = f["test_macro_f1"]
                quality = "speed only (quality: Does it work?)" if f1 is None else f1
                extra.append(
                    f"| {name}{setup} | {f['best_batch']} | {f['best_texts_per_s']} "
                    f"| {f['batch1_ms']} | {quality} |"
                )
        extra.append("")
    if "layouts" in r.get("ceiling", {}):
        extra += ["| form | processes x threads | batch | texts/s |", "| --- | --- | --- | --- |"]
        for name, table in r["ceiling"]["layouts"].items():
            for row in table["rows"]:
                extra.append(
                    f"| {name} | {row['processes']} x {row['threads']} | {row['batch']} "
                    f"| {row['texts_per_s']} |"
                )
        record = r["ceiling"].get("forms_record") or {}
        extra += [
            "",
            f"- served: {r['ceiling']['served']} ({r['ceiling']['served_reason']}); dev "
            f"macro-F1 fp32 {record.get('fp32', {}).get('dev_macro_f1')}, int8 "
            f"{record.get('int8', {}).get('dev_macro_f1')}, bf16 "
            f"{record.get('bf16', {}).get('dev_macro_f1', 'not scored')} "
            f"({record.get('dev_n')} texts)",
            "",
        ]
    split_row = next(
        (row for row in r.get("service", {}).get("/label", []) if "cpu_ms_per_request" in row),
        None,
    )
    if split_row:
        split = split_row["cpu_ms_per_request"]
        parts = ", ".join(f"{k} {v}" for k, v in split.items() if k != "server total")
        cores = r["machine"]["cpus"]
        # Were the cores busy with nothing else, what this much CPU per request allows.
        bound = round(1000 * cores / (split["server total"] + split["load client"]), 1)
        extra += [
            f"- CPU per /label request at concurrency {split_row['concurrency']} (ms, every "
            f"thread of every API process, and the client): {parts}; server total "
            f"{split['server total']}. {cores} cores at that cost serve at most {bound} "
            "texts/s.",
            "",
        ]
    if "tuning" in r:
        extra += [
            f"| /label c={r['tuning']['rows'][0]['concurrency']}, a fresh API each "
            "| processes x threads | bounds (texts, tokens) | texts/s | p50 ms | p99 ms |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for row in r["tuning"]["rows"]:
            bounds = row["batching"]
            extra.append(
                f"| {row['setting']} | {row['api_processes']} x {row['threads']} "
                f"| {bounds['max_texts']}, {bounds['max_tokens']} ({bounds['source']}) "
                f"| {row['texts_per_s']} | {row['p50_ms']} | {row['p99_ms']} |"
            )
        extra.append("")
    if "swap" in r:
        s = r["swap"]
        extra.append(
            f"- swap: p99 steady {s['p99_steady_ms']} ms, during the swap "
            f"{s['p99_during_swap_ms']} ms; publish to first answer from "
            f"v{s['published_version']}: "
            + ", ".join(f"{t} s" for t in s["seconds_to_first_new_answer"].values())
        )
    if "training" in r:
        t = r["training"]
        extra.append(
            f"- training step (batch {t['batch']}): ours {t['ours']['tokens_per_s']} tokens/s, "
            f"naive {t['naive']['tokens_per_s']} tokens/s, {t['speedup']}x"
            + (
                f"; ours under bf16 autocast {t['ours_bf16']['tokens_per_s']} tokens/s "
                f"({t['speedup_bf16']}x)"
                if "ours_bf16" in t
                else ""
            )
        )
    if r.get("goals"):
        extra += ["", "| goal | measured | target | met |", "| --- | --- | --- | --- |"]
        for g in r["goals"]:
            extra.append(
                f"| {g['goal']} | {g['measured']} | {g['target']} | {'yes' if g['met'] else 'NO'} |"
            )
    return "\n".join(lines + extra)


TABLE_START = "<!-- bench:start (written by make bench) -->"
TABLE_END = "<!-- bench:end -->"


def write_table(r: dict[str, Any], page: Path) -> None:
    """Put this run's table between the bench markers of docs/benchmarks.md."""
    text = page.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        log(f"{page} has no bench markers; table not written there")
        return
    m = r["machine"]
    header = (
        f"One run, {r['finished']}, on {m['cpu']} ({m['cpus']} cores, torch {m['torch']}, "
        f"serving {r.get('ceiling', {}).get('served', '?')}; the client shares the cores):"
    )
    before, rest = text.split(TABLE_START, 1)
    after = rest.split(TABLE_END, 1)[1]
    page.write_text(f"{before}{TABLE_START}\n{header}\n\n{render(r)}\n{TABLE_END}{after}")
    log(f"wrote the table into {page}")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="a tiny model and short runs (a smoke test)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument(
        "--parts",
        default=",".join(map(str, PARTS)),
        help="which parts to run, e.g. 1,3 ("
        + ", ".join(f"{k}: {v}" for k, v in PARTS.items())
        + ")",
    )
    parser.add_argument(
        "--reuse-model",
        action="store_true",
        help="serve the model a previous run bootstrapped under --out (saves minutes while tuning)",
    )
    parser.add_argument(
        "--no-docs", action="store_true", help="do not write the table into docs/benchmarks.md"
    )
    args = parser.parse_args()
    parts = sorted({int(p) for p in args.parts.split(",")})
    if not set(parts) <= set(PARTS):
        parser.error(f"--parts takes numbers from {sorted(PARTS)}")
    out: Path = args.out
    if not args.reuse_model:
        shutil.rmtree(out / "data", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    bench = Bench(args.quick, out)
    results: dict[str, Any] = {
        "machine": {
            "cpu": cpu_name(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "quick": args.quick,
        "parts": parts,
        "started": time.strftime("%Y-%m-%d %H:%M"),
    }
    try:
        if set(parts) & {1, 2, 3, 4, 5, 7}:
            bench.bootstrap(args.reuse_model)
        for number in parts:
            name = PARTS[number]
            method = {"service": bench.ours}.get(name) or getattr(bench, name)
            results[name] = method()
    finally:
        bench.service.stop()
        if bench.store is not None:
            bench.store.dispose()
    results["goals"] = goals(results)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M")
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    print(render(results))
    log(f"wrote {out / 'bench.json'}")
    if not args.quick and not args.no_docs and parts == sorted(PARTS):
        write_table(results, ROOT / "docs" / "benchmarks.md")


if __name__ == "__main__":
    main()
