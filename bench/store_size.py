"""`python -m bench.store_size`: the service on a store of millions of pseudo-labels.

A year of traffic at 30,000 labels a day is ten million rows. For each database
(PostgreSQL, SQLite) and each size (`--rows`, default 1M and 10M), a fresh store is filled
by bulk insert (COPY on PostgreSQL, executemany on SQLite; not through the API) with
synthetic pseudo-labels of the demo tweets spread evenly up to now, and measured beside
the same store empty, in the same run:

- `/label` p50 and p99 at concurrency 1 and 32 (`pfp api`, one process, from a client
  process on the same cores);
- `GET /labels` pages: the newest, a deep page by `after_id`, a deep page with a label
  filter;
- `GET /labels/export` of everything: rows/s and the API process's resident memory
  (before, and its peak during the export, sampled every 0.1 s);
- `GET /stats/labels` over the last day (hourly) and the last month (daily);
- the first `/metrics` scrape (its store figures are read, not cached);
- the dashboard: its page and the four fragments its script loads;
- a job's pool selection (workers/pipeline.py `gather_pool`, default policy) in a process
  of its own: seconds and peak memory above the process at rest; at 1M also with no
  step budget (every stored text), the cost a job had before budgets;
- a retention run over the oldest 10% (archive and delete, the worker's code) while a
  client labels at concurrency 1: rows/s and /label p50/p99 during it.

Results go to bench-results/store/store_size.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.forms import log
from bench.load import run_load

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-admin-key"
HEADERS = {"X-API-Key": KEY}
POSTGRES_ADMIN = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PG_DATABASE = "pfp_bench_store"
LABELS = ["negative", "neutral", "positive"]
PER_DAY = 30_000  # the traffic the issue sizes the store by: 30,000 labels a day
FILL_CHUNK = 100_000


# -- the store ---------------------------------------------------------------------------


def _pg_url(dbname: str) -> str:
    return POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{dbname}"


def fresh_store_url(database: str, out: Path) -> str:
    """An empty database of the kind asked for; what was there from a previous run goes."""
    if database == "sqlite":
        path = out / "store.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{path}"
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')
    return _pg_url(PG_DATABASE).replace("postgresql://", "postgresql+psycopg://")


def prepare_store(url: str, model_labels: list[str]) -> None:
    """Migrate; v1 (the bench's model folder) registered and active; the demo gold data."""
    from app.store import gold, versions
    from app.store.database import Store
    from app.store.gold_files import demo_gold

    store = Store(url)
    with store.session() as session:
        row = versions.create_version(
            session,
            labels=model_labels,
            parent_version=None,
            job_id=None,
            metrics={},
            lineage={"kind": "bench"},
            decision="published",
        )
        row.state = "ready"
        versions.activate(session, row.version, "bench")
    with store.session() as session:
        gold.import_gold(session, demo_gold(13), "bench")
    store.dispose()


def synthetic_rows(n: int, texts: list[str], now: datetime) -> Iterator[tuple[Any, ...]]:
    """n predictions of v1, evenly spaced at PER_DAY a day up to `now`, oldest first:
    a demo tweet with a number (5% repeat a tweet as is), a label with the demo data's
    skew, logits whose argmax is that label."""
    rng = random.Random(7)
    spacing = 86_400 / PER_DAY
    start = now - timedelta(seconds=spacing * n)
    shapes = []
    for _ in range(10_000):
        index = rng.choices(range(3), weights=(0.6, 0.2, 0.2))[0]
        logits = [rng.gauss(0.0, 1.0) for _ in range(3)]
        logits[index] = max(logits) + abs(rng.gauss(1.0, 1.0))
        total = sum(math.exp(x) for x in logits)
        shapes.append((LABELS[index], math.exp(logits[index]) / total, json.dumps(logits)))
    for i in range(n):
        label, confidence, logits_json = shapes[i % len(shapes)]
        text = texts[rng.randrange(len(texts))]
        if rng.random() > 0.05:
            text = f"{text} #{i}"
        yield text, label, confidence, logits_json, 1, start + timedelta(seconds=spacing * i)


def bulk_fill(url: str, n: int, texts: list[str]) -> float:
    """Insert n synthetic rows; seconds taken (VACUUM ANALYZE on PostgreSQL included, as
    autovacuum would have done to a table that grew over a year)."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    rows = synthetic_rows(n, texts, now)
    columns = "text, label, confidence, logits, model_version, created_at"
    if url.startswith("sqlite"):
        import sqlite3

        lite = sqlite3.connect(url.split("///", 1)[1])
        lite.execute("PRAGMA synchronous=OFF")
        insert = f"INSERT INTO pseudo_labels ({columns}) VALUES (?, ?, ?, ?, ?, ?)"
        while True:
            chunk = [
                (t, lb, c, lg, v, at.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f"))
                for t, lb, c, lg, v, at in itertools.islice(rows, FILL_CHUNK)
            ]
            if not chunk:
                break
            with lite:
                lite.executemany(insert, chunk)
        lite.close()
    else:
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            with conn.cursor() as cur, cur.copy(f"COPY pseudo_labels ({columns}) FROM STDIN") as cp:
                for row in rows:
                    cp.write_row(row)
            conn.commit()
            conn.autocommit = True
            conn.execute("VACUUM ANALYZE pseudo_labels")
    return time.perf_counter() - started


# -- the API -----------------------------------------------------------------------------


class Api:
    """`pfp api` on the store, on a free loopback port."""

    def __init__(self, url: str, out: Path, model_dir: Path) -> None:
        from bench.__main__ import free_port

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


# -- the worker's side -------------------------------------------------------------------


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


# -- the run -----------------------------------------------------------------------------


def bootstrap_model(out: Path) -> tuple[Path, list[str]]:
    """A served model: the base encoder fine-tuned for a few steps (the bench measures the
    store, not the model); reused from a previous run's folder if there."""
    data = out / "boot"
    model = data / "models" / "v1"
    if not (model / "config.json").is_file():
        shutil.rmtree(data, ignore_errors=True)
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
            "DATA_DIR": str(data),
            "BOOTSTRAP_MAX_STEPS": "10",
            "MAX_LENGTH": "64",
            "HF_HUB_OFFLINE": "1",
        }
        log("bootstrapping a model to serve (10 steps)")
        subprocess.run(
            [sys.executable, "-m", "app.cli", "bootstrap"], cwd=ROOT, env=env, check=True
        )
    config = json.loads((model / "config.json").read_text())
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    return data / "models", labels


def measure_level(
    database: str, rows: int, out: Path, model_dir: Path, labels: list[str], quick: bool
) -> dict[str, Any]:
    from app.store.gold_files import demo_gold

    texts = [g.text for g in demo_gold(13) if g.split == "train"]
    url = fresh_store_url(database, out)
    prepare_store(url, labels)
    result: dict[str, Any] = {"database": database, "rows": rows}
    if rows:
        log(f"{database}: filling {rows:,} rows")
        result["fill_seconds"] = round(bulk_fill(url, rows, texts), 1)
        log(f"{database}: filled in {result['fill_seconds']} s")
    result["pool"] = run_probe(url, None)
    if rows and rows <= 1_000_000:
        result["pool_unbounded"] = run_probe(url, 0)
    api = Api(url, out, model_dir)
    try:
        result.update(measure_api(api, texts, 2.0 if quick else 6.0))
        if rows:
            result["retention"] = measure_retention(url, out, api, texts)
    finally:
        api.stop()
    log(f"{database} at {rows:,} rows: {json.dumps(result)}")
    return result


def render(results: list[dict[str, Any]]) -> str:
    header = (
        "| database | rows | /label c=1 p50 / p99 ms | /label c=32 p50 / p99 ms | "
        "deep page ms (plain / label) | export rows/s, RSS before -> peak MB | "
        "stats day / month ms | /metrics ms | dashboard ms | pool: texts, s, MB | "
        "retention of 10%: rows/s, /label c=1 p50 / p99 during |"
    )
    lines = [header, "|" + " --- |" * 11]
    for r in results:
        c1, c32, pages, export = r["label_c1"], r["label_c32"], r["labels_page_ms"], r["export"]
        pool = r["pool"]
        ret = r.get("retention", {})
        during = ret.get("label_c1_during", {})
        lines.append(
            f"| {r['database']} | {r['rows']:,} | {c1['p50_ms']} / {c1['p99_ms']} "
            f"| {c32['p50_ms']} / {c32['p99_ms']} | {pages['deep']} / {pages['deep_with_label']} "
            f"| {export['rows_per_s']:,}, {export['rss_before_mb']} -> {export['rss_peak_mb']} "
            f"| {r['stats_ms']['day_hourly']} / {r['stats_ms']['month_daily']} "
            f"| {r['metrics_first_scrape_ms']} | {r['dashboard_ms']} "
            f"| {pool.get('texts')}, {pool.get('seconds')}, {pool.get('peak_above_rest_mb')} "
            + (
                f"| {ret.get('rows_per_s', '-'):,}, {during.get('p50_ms')} / {during.get('p99_ms')} |"
                if ret
                else "| - |"
            )
        )
    unbounded = [r for r in results if "pool_unbounded" in r]
    for r in unbounded:
        u = r["pool_unbounded"]
        lines.append(
            f"\nWith no step budget ({r['database']}, {r['rows']:,} rows), the pool is every "
            f"stored text: {u.get('texts')} texts, {u.get('seconds')} s, "
            f"{u.get('peak_above_rest_mb')} MB above the process at rest."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.store_size", description=__doc__)
    parser.add_argument("--rows", default="1000000,10000000", help="store sizes, comma-separated")
    parser.add_argument("--databases", default="postgresql,sqlite")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "store")
    parser.add_argument("--quick", action="store_true", help="short loads (a smoke test)")
    parser.add_argument("--probe-pool", help=argparse.SUPPRESS)
    parser.add_argument("--probe-budget", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe_pool:
        print(json.dumps(probe_pool(args.probe_pool, args.probe_budget)))
        return
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    sizes = [0, *(int(x) for x in args.rows.split(",") if x.strip())]
    model_dir, labels = bootstrap_model(out)
    results = []
    started = time.strftime("%Y-%m-%d %H:%M")
    for database in args.databases.split(","):
        for rows in sizes:
            results.append(measure_level(database, rows, out, model_dir, labels, args.quick))
            (out / "store_size.json").write_text(
                json.dumps({"started": started, "results": results}, indent=2)
            )
    if "postgresql" in args.databases:
        fresh_store_url("postgresql", out)  # leave no 10M-row database behind
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
    for suffix in ("", "-wal", "-shm"):
        Path(f"{out / 'store.db'}{suffix}").unlink(missing_ok=True)
    print(render(results))
    log(f"wrote {out / 'store_size.json'}")


if __name__ == "__main__":
    main()
