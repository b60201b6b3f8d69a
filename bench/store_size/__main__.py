"""`python -m bench.store_size`: the run (see the package's docstring): per database and
size, a filled store measured beside the same store empty, and the table of it."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.forms import log
from bench.service import ROOT
from bench.store_size import __doc__ as ABOUT
from bench.store_size.fill import bulk_fill, drop_database, fresh_store_url, prepare_store
from bench.store_size.measure import Api, measure_api, measure_retention, probe_pool, run_probe


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
    parser = argparse.ArgumentParser(prog="python -m bench.store_size", description=ABOUT)
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
        drop_database()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{out / 'store.db'}{suffix}").unlink(missing_ok=True)
    print(render(results))
    log(f"wrote {out / 'store_size.json'}")


if __name__ == "__main__":
    main()
