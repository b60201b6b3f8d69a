"""The store `python -m bench.store_size` measures: a fresh database of the kind asked for,
the bench's model registered and active, and millions of synthetic pseudo-labels written
by bulk insert (COPY on PostgreSQL, executemany on SQLite; not through the API)."""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

POSTGRES_ADMIN = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PG_DATABASE = "pfp_bench_store"
LABELS = ["negative", "neutral", "positive"]
PER_DAY = 30_000  # the traffic the store is sized for: labels a day
FILL_CHUNK = 100_000


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


def drop_database() -> None:
    """Leave no bench database of millions of rows behind on the PostgreSQL server."""
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
