"""A load generator: N concurrent clients on loopback for a fixed time, with latencies."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    texts_per_request: int
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    versions: list[tuple[float, str, int]] = field(default_factory=list)  # (time, url, version)

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def failed(self) -> int:
        return self.errors + sum(n for s, n in self.statuses.items() if s != 200)

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    def summary(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "texts_per_s": round(self.ok * self.texts_per_request / self.seconds, 1),
            "requests": self.ok + self.failed,
            "failed": self.failed,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "p50_ms": round(self.percentile(50) * 1000, 1),
            "p95_ms": round(self.percentile(95) * 1000, 1),
            "p99_ms": round(self.percentile(99) * 1000, 1),
            "mean_ms": round(statistics.fmean(self.latencies) * 1000, 1)
            if self.latencies
            else None,
        }


def run_load(
    urls: Sequence[str],
    path: str,
    texts: Sequence[str],
    concurrency: int,
    seconds: float,
    batch: int = 0,
    headers: dict[str, str] | None = None,
    during: Callable[[float], None] | None = None,
    max_requests: int = 100_000,
) -> LoadResult:
    """POST to `path` on `urls` (round-robin) from `concurrency` clients for `seconds`.

    batch = 0 sends {"text": t}; batch > 0 sends {"texts": [...batch texts]}.
    `during(elapsed)` runs in a thread once, after a third of the time (used to publish a
    model mid-load)."""
    result = LoadResult(concurrency, seconds, max(1, batch))
    cycle = itertools.cycle(texts)

    async def main() -> None:
        start = time.perf_counter()
        deadline = start + seconds
        sent = 0

        async def client_loop(client: httpx.AsyncClient, n: int) -> None:
            nonlocal sent
            url = urls[n % len(urls)]
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                if batch:
                    body: dict[str, Any] = {"texts": [next(cycle) for _ in range(batch)]}
                else:
                    body = {"text": next(cycle)}
                t0 = time.perf_counter()
                try:
                    r = await client.post(f"{url}{path}", json=body)
                except httpx.HTTPError:
                    result.errors += 1
                    continue
                elapsed = time.perf_counter() - t0
                result.statuses[r.status_code] = result.statuses.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    result.latencies.append(elapsed)
                    answer = r.json()
                    first = answer["results"][0] if batch else answer
                    result.versions.append(
                        (time.perf_counter() - start, url, first["model_version"])
                    )

        async def side_task() -> None:
            if during is None:
                return
            await asyncio.sleep(seconds / 3)
            await asyncio.to_thread(during, time.perf_counter() - start)

        limits = httpx.Limits(
            max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4
        )
        async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as client:
            await asyncio.gather(side_task(), *(client_loop(client, n) for n in range(concurrency)))
        # Requests sent before the deadline finish after it: rates use the whole wall time.
        result.seconds = time.perf_counter() - start

    asyncio.run(main())
    return result
