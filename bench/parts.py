"""The parts of `python -m bench`, each a function of the shared state (`Bench`) that
returns what it measured:

1. ceiling: the bare batched forward pass of every form, and the machine's ceiling of the
   forms the service may serve here, every layout of processes x threads;
2. naive: a transformers pipeline behind FastAPI, one request at a time;
3. service: `/label` and `/label/batch` at several concurrencies, from a separate client;
4. swap: a model published while two API processes serve;
5. while_training: serving while a training job runs on the same machine;
6. training: our joint step against a naive one on the same batches;
7. tuning: self-tuned micro-batch bounds against fixed ones, and each API layout;
8. teacher: the stronger teacher's forms at the machine's ceiling (bench/teacher.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

from app.ml.serving_forms import Form, read_forms
from app.registry import version_dir
from app.serving.form_choice import candidate_forms
from bench.context import Bench
from bench.cpu_split import cpu_per_request
from bench.forms import log
from bench.layouts import batch1_alone, layouts, measure_layouts
from bench.load import LoadResult, run_load
from bench.service import HEADERS, ROOT, free_port, publish_copy
from bench.teacher import teacher
from bench.training import measure_training

# The names part 1 gives the forms an API process serves (`served_form`).
PART1_NAMES = {
    Form.ONNX_FP32: "onnxruntime",
    Form.ONNX_INT8: Form.ONNX_INT8.value,
    Form.TORCH_BF16: Form.TORCH_BF16.value,
    Form.TORCH_FP32: "fp32",
    Form.TORCH_INT8: "int8",
}


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


# -- 1: ceiling ----------------------------------------------------------------


def ceiling(bench: Bench) -> dict[str, Any]:
    """Every form of the model, in one process (`_every_form`); and, where ONNX Runtime
    serves, the machine's ceiling of each form the service may serve here, every layout
    of processes x threads, all processes at once (`_machine_ceiling`)."""
    test = [g for g in bench.gold if g.split == "test"][: 200 if bench.quick else 1440]
    forms = _every_form(bench, [(g.text, g.label) for g in test])
    folder = version_dir(bench.settings, 1)
    # The forms an API process may serve this version in here, by the service's own
    # rules (the ONNX form its gate chose, and bf16 where its gate lets it: the API
    # measures them against each other at load and serves the faster).
    candidates = [c.form for c in candidate_forms(bench.settings, folder)]
    if bench.settings.infer_backend != "onnxruntime":
        # The torch forms: one process, as measured above.
        served = PART1_NAMES[candidates[0]]
        return {"forms": forms, "served": served, "test_n": len(test), **forms[served]}
    machine = _machine_ceiling(bench, candidates)
    best = machine["best_layout"]
    return {
        "forms": forms,
        "forms_record": read_forms(folder),
        "test_n": len(test),
        **machine,
        "best_batch": best["batch"],
        "best_texts_per_s": best["texts_per_s"],
        "by_batch": forms[PART1_NAMES[machine["served"]]]["by_batch"],
    }


def _every_form(bench: Bench, test: list[tuple[str, str]]) -> dict[str, Any]:
    """Texts/s per batch size and test macro-F1 of every form, measured in a process of
    its own, so that what the forms leave behind (compiler workers, ONNX Runtime
    threads) does not load the client of the later parts."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from bench.forms import measure_forms

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        forms: dict[str, Any] = pool.submit(
            measure_forms,
            version_dir(bench.settings, 1),
            bench.settings.max_length,
            bench.texts,
            test,
            [1, 8, 32] if bench.quick else [1, 8, 16, 32, 64],
            bench.seconds / 2,
            bench.out / "onnx",
        ).result()
    return forms


def _machine_ceiling(bench: Bench, candidates: list[Form]) -> dict[str, Any]:
    """The ceiling of the candidates and of fp32 ONNX Runtime, every layout; the service
    is held to the ceiling of the form it serves: what its API says it serves."""
    s, folder = bench.settings, version_dir(bench.settings, 1)
    cores = os.cpu_count() or 1
    sizes = [1, 8, 16] if bench.quick else [1, 8, 16, 32]

    def ceiling_of(form: Form) -> dict[str, Any]:
        log(f"1. ceiling of the machine: {form}, every layout")
        args = (s.max_length, bench.texts, cores, sizes, bench.seconds / 2)
        return measure_layouts(folder, form, *args)

    by_layout = {form: ceiling_of(form) for form in dict.fromkeys([*candidates, Form.ONNX_FP32])}
    active = bench.active_model()
    served = Form(active["served_form"])
    if served not in by_layout:
        by_layout[served] = ceiling_of(served)
    best = by_layout[served]["best"]
    return {
        "served": served,
        "served_reason": active["served_form_reason"],
        "forms_compared": active["forms_compared"],
        "layouts": by_layout,
        "best_layout": best,
        "fp32_best_texts_per_s": by_layout[Form.ONNX_FP32]["best"]["texts_per_s"],
        "batch1_ms": batch1_alone(
            folder, served, s.max_length, bench.texts, best["threads"], bench.seconds / 2
        ),
    }


# -- 2: naive ------------------------------------------------------------------


def naive(bench: Bench) -> dict[str, Any]:
    log("2. naive baseline: pipeline behind FastAPI, one request at a time")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.naive_app:app", "--port", str(port)]
        + ["--log-level", "warning"],
        cwd=ROOT,
        env={**bench.env, "NAIVE_MODEL_DIR": str(version_dir(bench.settings, 1))},
        stdout=(bench.out / "naive.log").open("wb"),
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
        return run_load([url], "/label", bench.texts, bench.conc, bench.seconds).summary()
    finally:
        proc.terminate()
        proc.wait(30)


# -- 3: ours, the service -------------------------------------------------------


def ours(bench: Bench) -> dict[str, list[dict[str, Any]]]:
    log("3. our service: /label and /label/batch per concurrency")
    rows: dict[str, list[dict[str, Any]]] = {"/label": [], "/label/batch": []}
    for c in [1, 8] if bench.quick else [1, 8, 32, 64]:
        if c == bench.conc:
            # What each request costs the cores beside the forward pass, by thread.
            load, split = cpu_per_request(
                bench.service.api_pids[bench.api()],
                lambda: bench.load("/label", bench.conc),
                lambda load: load.ok,
            )
            rows["/label"].append({**load.summary(), "cpu_ms_per_request": split})
        else:
            rows["/label"].append(bench.load("/label", c).summary())
        rows["/label/batch"].append(bench.load("/label/batch", c, batch=16).summary())
    return rows


# -- 4: swap -------------------------------------------------------------------


def swap(bench: Bench) -> dict[str, Any]:
    log("4. swap under load: a model published mid-run while two API replicas serve")
    assert bench.store is not None
    urls = [bench.api(), bench.service.api()]
    run_load(urls[1:], "/label", bench.texts, 8, 1.0, headers=HEADERS)  # warm-up
    published: dict[str, float] = {}

    def publish(elapsed: float) -> None:
        assert bench.store is not None
        began = time.perf_counter()
        published["version"] = publish_copy(bench.settings, bench.store)
        # From the activation (the end of publishing) on: what API processes control.
        published["at"] = elapsed + time.perf_counter() - began

    swap = run_load(
        urls, "/label", bench.texts, bench.conc, bench.seconds * 2.5, 0, HEADERS, during=publish
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


# -- 5: while_training ---------------------------------------------------------


def while_training(bench: Bench) -> dict[str, Any]:
    """c=8 on /label with no job, then while a job trains under each WORKER_SETUPS
    entry (the job is cancelled once measured: only its training steps matter)."""
    log("5. serving while a training job runs")
    url = bench.api()
    results: dict[str, Any] = {}
    idle: list[LoadResult] = []
    # Pseudo-labels for the job to pre-train on.
    httpx.post(
        f"{url}/label/batch", json={"texts": bench.texts[:200]}, headers=HEADERS, timeout=120
    )
    names = list(WORKER_SETUPS)
    setups = {n: WORKER_SETUPS[n] for n in (names[0], names[-1])} if bench.quick else WORKER_SETUPS
    for name, setup in setups.items():
        # Idle again before each setup: the machine drifts over minutes.
        idle.append(bench.load("/label", 8))
        log(f"5. worker: {name}")
        prefix, env = setup
        worker = bench.service.start(f"worker-{len(results)}", "worker", prefix=prefix, **env)
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
            time.sleep(1 if bench.quick else 4)
            results[name] = run_load(
                [url], "/label", bench.texts, 8, bench.seconds * 2, 0, HEADERS
            ).summary()
            results[name]["setup"] = {"command": " ".join(prefix), **env}
            httpx.post(f"{job_url}/cancel", headers=HEADERS)
            while httpx.get(job_url, headers=HEADERS).json()["status"] == "running":
                time.sleep(0.5)
        finally:
            bench.service.stop_one(worker)
    merged = LoadResult(8, sum(r.seconds for r in idle), 1)
    for r in idle:
        merged.latencies += r.latencies
        for status, n in r.statuses.items():
            merged.statuses[status] = merged.statuses.get(status, 0) + n
        merged.errors += r.errors
    return {"idle": merged.summary(), **results}


# -- 7: tuning -----------------------------------------------------------------


def tuning(bench: Bench) -> dict[str, Any]:
    """/label at the top concurrency, a fresh API per setting: the self-tuned bounds
    (the default) against fixed ones, and each layout of API processes x threads."""
    log("7. self-tuned batching against fixed bounds, and the API layouts")
    cores = os.cpu_count() or 1
    default: tuple[str, dict[str, str]] = ("self-tuned bounds, default layout", {})
    others: list[tuple[str, dict[str, str]]] = []
    for n in [8] if bench.quick else [4, 8, 16, 32]:
        fixed = {"INFER_MAX_BATCH": str(n), "INFER_MAX_BATCH_TOKENS": "4096"}
        others.append((f"fixed bounds: {n} texts", fixed))
    if "bf16" in bench.active_model()["served_form"]:
        # What serving bf16 buys over the ONNX form the gate would serve without it.
        others.append(("ONNX form only (INFER_BF16=never), self-tuned", {"INFER_BF16": "never"}))
    default_layout = bench.settings.api_layout
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
        url = bench.service.api(**env)
        proc = bench.service.procs[-1]
        try:
            run_load([url], "/label", bench.texts, 8, 1.0, headers=HEADERS)  # warm-up
            active = httpx.get(f"{url}/models/active", headers=HEADERS).json()
            row = bench.load("/label", bench.conc, url=url).summary()
            row |= {"setting": name, "batching": active["batching"], **active["process"]}
            rows.append(row)
        finally:
            bench.service.stop_one(proc)
    return {"rows": rows}


# -- 6: training ---------------------------------------------------------------


def training(bench: Bench) -> dict[str, Any]:
    log("6. training throughput: joint step against a naive one")
    from app.core.config import packaged_base_model

    return measure_training(
        bench.base or packaged_base_model(),
        bench.texts,
        2 if bench.quick else 4,
        8 if bench.quick else 32,
        64,
    )


# The parts by number, as `--parts` takes them; results are kept under each name.
PARTS: dict[int, tuple[str, Callable[[Bench], Any]]] = {
    1: ("ceiling", ceiling),
    2: ("naive", naive),
    3: ("service", ours),
    4: ("swap", swap),
    5: ("while_training", while_training),
    6: ("training", training),
    7: ("tuning", tuning),
    8: ("teacher", teacher),
}
