"""What `python -m bench.store_size` measures on a filled store: `pfp api` serving it
(labels, pages, the export, stats, metrics, the dashboard), a job's pool selection in a
process of its own, and a retention run while a client labels."""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.load import run_load
from bench.service import HEADERS, KEY, ROOT, free_port


class Api:
    """`pfp api` on the store, on a free loopback port."""

    def __init__(self, url: str, out: Path, model_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
            "DATABASE_URL": url,
            "DATA_DIR": str(out / "data"),
            "MODEL_DIR": str(model_dir),
            "ADMIN_API_KEYS": KEY,
            "MAX_LENGTH": "64",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "LOG_LEVEL": "warning",
        }
        self.log = (out / f"api-{self.port}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def timed_get(client: httpx.Client, url: str, repeat: int = 5, **params: Any) -> float:
    """Median milliseconds of `repeat` GETs (each must answer 200)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        r = client.get(url, params=params)
        times.append(time.perf_counter() - started)
        r.raise_for_status()
    return round(statistics.median(times) * 1000, 1)


def measure_export(api: Api) -> dict[str, Any]:
    """Stream the whole export; rows/s and the server's resident memory around it."""
    before = api.rss_mb()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            peak[0] = max(peak[0], api.rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rows = 0
    started = time.perf_counter()
    with (
        httpx.Client(headers=HEADERS, timeout=600) as client,
        client.stream("GET", f"{api.url}/labels/export") as response,
    ):
        response.raise_for_status()
        for line in response.iter_lines():
            if line:
                rows += 1
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    return {
        "rows": rows,
        "seconds": round(seconds, 1),
        "rows_per_s": round(rows / seconds),
        "rss_before_mb": round(before),
        "rss_peak_mb": round(peak[0]),
    }


def measure_api(api: Api, texts: list[str], seconds: float) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with httpx.Client(headers=HEADERS, timeout=120) as client:
        # The first scrape reads the store (the collector caches it for a few seconds).
        started = time.perf_counter()
        client.get(f"{api.url}/metrics").raise_for_status()
        result["metrics_first_scrape_ms"] = round((time.perf_counter() - started) * 1000, 1)
        run_load([api.url], "/label", texts, 8, 1.0, headers=HEADERS)  # warm-up
        for concurrency in (1, 32):
            load = run_load([api.url], "/label", texts, concurrency, seconds, headers=HEADERS)
            summary = load.summary()
            result[f"label_c{concurrency}"] = {
                k: summary[k] for k in ("p50_ms", "p99_ms", "texts_per_s", "failed")
            }
        # The newest page, a page half-way down, a label-filtered page half-way down.
        with_max = api_max_id(client, api.url)
        result["labels_page_ms"] = {
            "newest": timed_get(client, f"{api.url}/labels", after_id=max(0, with_max - 100)),
            "deep": timed_get(client, f"{api.url}/labels", after_id=with_max // 2),
            "deep_with_label": timed_get(
                client, f"{api.url}/labels", after_id=with_max // 2, label="positive"
            ),
        }
        result["stats_ms"] = {
            "day_hourly": timed_get(client, f"{api.url}/stats/labels", 3, bucket="hour"),
            "month_daily": timed_get(
                client,
                f"{api.url}/stats/labels",
                3,
                bucket="day",
                since=(datetime.now(UTC) - timedelta(days=30)).isoformat(),
            ),
        }
        started = time.perf_counter()
        for path in ("/dashboard", *(f"/dashboard/fragments/{f}" for f in FRAGMENTS)):
            client.get(f"{api.url}{path}").raise_for_status()
        result["dashboard_ms"] = round((time.perf_counter() - started) * 1000, 1)
    result["export"] = measure_export(api)
    return result


FRAGMENTS = ("active", "versions", "jobs", "stats")


def api_max_id(client: httpx.Client, url: str) -> int:
    """The newest id, from /metrics' stored count (no API lists newest first)."""
    for line in client.get(f"{url}/metrics").text.splitlines():
        if line.startswith("pfp_pseudo_labels_stored "):
            return int(float(line.split()[1]))
    return 0


# -- the worker's side ------------------------------------------------------------------


def probe_pool(url: str, budget: int | None) -> dict[str, Any]:
    """In this process: `gather_pool` as a job runs it; seconds and peak memory."""
    from app.ml.job_params import JobParams
    from app.ml.pool import PoolPolicy
    from app.store.database import Store
    from workers.pipeline import current_champion, gather_pool

    store = Store(url)
    champion = current_champion(store)
    assert champion is not None
    params = (
        JobParams() if budget is None else JobParams().updated({"pretrain.step_budget": budget})
    )
    at_rest = _rss_kb()
    started = time.perf_counter()
    pool = gather_pool(store, champion.labels, 2**62, PoolPolicy.for_job(params))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "texts": len(pool.texts),
        "scanned": pool.summary["scanned"],
        "seconds": round(seconds, 2),
        "peak_above_rest_mb": round(max(0, peak - at_rest) / 1024, 1),
    }


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run_probe(url: str, budget: int | None) -> dict[str, Any]:
    args = [sys.executable, "-m", "bench.store_size", "--probe-pool", url]
    if budget is not None:
        args += ["--probe-budget", str(budget)]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def measure_retention(url: str, out: Path, api: Api, texts: list[str]) -> dict[str, Any]:
    """Archive and delete the oldest 10% with the worker's code, in a process of its own,
    while a client labels at concurrency 1."""
    script = (
        "import json, sys, time\n"
        "from datetime import timedelta\n"
        "from app.core.config import Settings\n"
        "from app.store import retention\n"
        "from app.store.database import Store\n"
        "from app.store.tables import PseudoLabel\n"
        "from sqlalchemy import func, select\n"
        "from workers.retention import run_retention\n"
        "store = Store(sys.argv[1])\n"
        "with store.session() as s:\n"
        "    lo, hi = s.execute(select(func.min(PseudoLabel.id), func.max(PseudoLabel.id))).one()\n"
        "    cut = s.get(PseudoLabel, lo + (hi - lo) // 10).created_at\n"
        "    run_id = retention.start_run(s, retention.plan(s, cut), True).id\n"
        "started = time.perf_counter()\n"
        "run_retention(run_id, Settings(data_dir=sys.argv[2]), store)\n"
        "with store.session() as s:\n"
        "    run = retention.get_run(s, run_id)\n"
        "    print(json.dumps({'status': run.status, 'rows': run.deleted,\n"
        "        'seconds': round(time.perf_counter() - started, 1), 'error': run.error}))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, url, str(out / "data")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    loads = []
    while proc.poll() is None:
        loads.append(run_load([api.url], "/label", texts, 1, 3.0, headers=HEADERS))
    stdout, _ = proc.communicate()
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    latencies = sorted(x for load in loads for x in load.latencies)
    if latencies:
        result["label_c1_during"] = {
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
            "p99_ms": round(
                latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000, 1
            ),
            "failed": sum(load.failed for load in loads),
        }
    if result.get("rows"):
        result["rows_per_s"] = round(result["rows"] / max(0.1, result["seconds"]))
    shutil.rmtree(out / "data" / "archive", ignore_errors=True)
    return result
