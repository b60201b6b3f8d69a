"""The machine's serving ceiling: the bare forward pass of a served form in every layout of
processes x threads that fits the cores, all processes running at once.

One process's best batch is not the machine's ceiling: on 2 cores two processes of one
thread each outran one process of two threads (docs/benchmarks.md, "The layout"),
because a small encoder's pass on a micro-batch does not keep two threads busy. So the
ceiling the bench holds the service to is the best of these layouts, for the form the
service actually serves.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from app.ml.serving_forms import Form, load_form


def layouts(cores: int) -> list[tuple[int, int]]:
    """(processes, threads each) that use all `cores`: 1 x cores, ..., cores x 1."""
    return [(p, cores // p) for p in range(1, cores + 1) if cores % p == 0]


# The barrier of the layout a child process belongs to (set as it starts: a barrier
# travels to a child only then).
_together: Any = None


def _join(barrier: Any) -> None:
    global _together
    _together = barrier


def _one_process(
    folder: str,
    form: Form,
    max_length: int,
    texts: list[str],
    batches: list[int],
    threads: int,
    seconds: float,
) -> list[float]:
    """In a child: load the form, then for each batch texts/s for `seconds`, starting
    together with the other processes of its layout (so that all of them run at once)."""
    import torch

    from bench.forms import measure_ceiling

    torch.set_num_threads(threads)
    try:
        classifier = load_form(Path(folder), form, max_length, threads)
        classifier.logits(texts[: max(batches)])
    except BaseException:
        _together.abort()  # the siblings fail now instead of waiting out the timeout
        raise
    speeds = []
    for batch in batches:
        # Loading takes seconds and differs by form: the barrier, not a fixed delay,
        # starts each measurement (a sibling that never arrives fails it, not hangs it).
        _together.wait(timeout=300)
        speeds.append(measure_ceiling(classifier, texts, [batch], seconds)[batch]["texts_per_s"])
    return speeds


def measure_layouts(
    folder: Path,
    form: Form,
    max_length: int,
    texts: list[str],
    cores: int,
    batches: list[int],
    seconds: float,
) -> dict[str, Any]:
    """Texts/s of the version in `folder` served in `form` per layout and batch, all
    processes of a layout at once; the best layout and batch."""
    rows: list[dict[str, Any]] = []
    context = multiprocessing.get_context("spawn")
    for processes, threads in layouts(cores):
        barrier = context.Barrier(processes)
        with ProcessPoolExecutor(
            processes, mp_context=context, initializer=_join, initargs=(barrier,)
        ) as pool:
            args = (str(folder), form, max_length, texts, batches, threads, seconds)
            futures = [pool.submit(_one_process, *args) for _ in range(processes)]
            speeds = [f.result() for f in futures]
        for n, batch in enumerate(batches):
            rows.append(
                {
                    "processes": processes,
                    "threads": threads,
                    "batch": batch,
                    "texts_per_s": round(sum(s[n] for s in speeds), 1),
                }
            )
    best = max(rows, key=lambda r: r["texts_per_s"])
    return {"rows": rows, "best": best}


def best_within(rows: list[dict[str, Any]], in_flight: int) -> dict[str, Any]:
    """The fastest layout and batch that `in_flight` texts can fill: a load of N concurrent
    one-text requests never has more than N texts in the server, so two processes cannot
    both run passes of N (the ceiling of 2 x 1 at batch 32 needs 64 texts at once)."""
    fits = [r for r in rows if r["processes"] * r["batch"] <= in_flight]
    return max(fits or rows, key=lambda r: r["texts_per_s"])


def batch1_alone(
    folder: Path, form: Form, max_length: int, texts: list[str], threads: int, seconds: float
) -> float:
    """Milliseconds of one batch-1 forward pass (tokenizing included) of one process with
    `threads` threads, nothing else running: the pass a lone /label request waits for."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        1, mp_context=context, initializer=_join, initargs=(context.Barrier(1),)
    ) as pool:
        speed = pool.submit(
            _one_process, str(folder), form, max_length, texts, [1], threads, seconds
        ).result()[0]
    return round(1000 / speed, 2)
