"""A load generator: N concurrent clients on loopback for a fixed time, with latencies.

The client shares the machine's cores with the server, so every bit of CPU it spends per
request is taken from the server it measures. It therefore speaks plain HTTP/1.1 over one
keep-alive connection per client with asyncio streams (the way wrk or oha do) instead of
through httpx, whose cost per request took a visible share of the server's throughput
(docs/benchmarks.md, "Why serving is built this way").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


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


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads the JSON answer."""

    def __init__(self, url: str, headers: dict[str, str] | None) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._head = (
            f"Host: {self.host}:{self.port}\r\nContent-Type: application/json\r\n{extra}"
        ).encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        self._writer.write(
            b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s"
            % (path.encode(), self._head, len(body), body)
        )
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            fields = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            if fields.get("transfer-encoding", "").lower() == "chunked":
                payload = await self._read_chunked()
            else:
                payload = await self._reader.readexactly(int(fields.get("content-length", 0)))
            if fields.get("connection", "").lower() == "close":
                await self.close()
            return status, payload
        except BaseException:
            await self.close()  # a half-read answer leaves the connection unusable
            raise

    async def _read_chunked(self) -> bytes:
        assert self._reader is not None
        out = bytearray()
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")
                return bytes(out)
            out += await self._reader.readexactly(size)
            await self._reader.readexactly(2)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


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

        async def client_loop(n: int) -> None:
            nonlocal sent
            url = urls[n % len(urls)]
            connection = Connection(url, headers)
            try:
                while time.perf_counter() < deadline and sent < max_requests:
                    sent += 1
                    if batch:
                        body: dict[str, Any] = {"texts": [next(cycle) for _ in range(batch)]}
                    else:
                        body = {"text": next(cycle)}
                    t0 = time.perf_counter()
                    try:
                        status, payload = await connection.post(path, json.dumps(body).encode())
                    except (OSError, asyncio.IncompleteReadError, ValueError):
                        result.errors += 1
                        await asyncio.sleep(0.01)  # a refused connect must not spin
                        continue
                    elapsed = time.perf_counter() - t0
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    if status == 200:
                        result.latencies.append(elapsed)
                        answer = json.loads(payload)
                        first = answer["results"][0] if batch else answer
                        result.versions.append(
                            (time.perf_counter() - start, url, first["model_version"])
                        )
            finally:
                await connection.close()

        async def side_task() -> None:
            if during is None:
                return
            await asyncio.sleep(seconds / 3)
            await asyncio.to_thread(during, time.perf_counter() - start)

        await asyncio.gather(side_task(), *(client_loop(n) for n in range(concurrency)))
        # Requests sent before the deadline finish after it: rates use the whole wall time.
        result.seconds = time.perf_counter() - start

    asyncio.run(main())
    return result
