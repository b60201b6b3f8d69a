"""Where the CPU goes while the service serves: per kind of thread of the API processes
(the OS names they give their threads) and the load client, in milliseconds per request.

The ceiling of the machine counts only the forward pass; this says what else each request
costs the same cores, and so how close to the ceiling the service can come.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# OS thread names (app/serving/batch_callers.named_thread) -> what the thread does.
KINDS = {"pfp-infer": "inference", "pfp-store": "store writer"}
EVENT_LOOP = "event loop (HTTP, routes, logs)"
OTHER = "other threads and the supervisor"


def process_tree(root: int) -> list[int]:
    """`root` and every process below it."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += parents.get(pid, [])
    return tree


def thread_cpu(pids: list[int]) -> dict[str, float]:
    """CPU seconds so far of every thread of `pids` (a process tree, its root first),
    summed by kind. The main thread of an API process runs its event loop; with several
    processes the root is their supervisor."""
    ticks = os.sysconf("SC_CLK_TCK")
    api = set(pids[1:] or pids)
    out: dict[str, float] = defaultdict(float)
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                text = (task / "stat").read_text()
            except OSError:
                continue  # the thread ended meanwhile
            name = text[text.index("(") + 1 : text.rindex(")")]
            fields = text.rsplit(")", 1)[1].split()
            seconds = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
            if name in KINDS:
                out[KINDS[name]] += seconds
            elif pid in api and int(task.name) == pid:
                out[EVENT_LOOP] += seconds
            else:
                out[OTHER] += seconds
    return out


def cpu_per_request(
    root: int, run: Callable[[], T], requests: Callable[[T], int]
) -> tuple[T, dict[str, Any]]:
    """Run `run()` (a load from this process) and split the CPU it cost, per request: the
    service's threads under process `root` by kind, and this process (the client)."""
    pids = process_tree(root)
    before, client_before = thread_cpu(pids), time.process_time()
    result = run()
    after, client_after = thread_cpu(pids), time.process_time()
    n = max(1, requests(result))
    split = {kind: round(1000 * (after[kind] - before[kind]) / n, 2) for kind in after}
    split["load client"] = round(1000 * (client_after - client_before) / n, 2)
    split["server total"] = round(sum(v for k, v in split.items() if k != "load client"), 2)
    return result, split
