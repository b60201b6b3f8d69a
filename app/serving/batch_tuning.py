"""Micro-batch bounds measured for the model being loaded, on the CPU it is loaded on.

The fastest micro-batch depends on the model, its form (fp32, int8, bf16), the runtime and
the CPU: two 2-core machines of the same kind disagreed on it (docs/benchmarks.md, "Why
serving is built this way"). So when an API process loads a version it runs the served
form for a few seconds, off the request path (before the swap), on texts like the ones it
will serve (the store's newest, else gold: read through the callable it is given), at a
few bounds, and serves with the fastest. It runs as many passes at once as the layout has
API processes, as they run under load.

What the measurement chose is cached under MODEL_DIR/.batch-tuning per model shape (the
architecture in config.json: versions retrained from one base share it), form, CPU and
layout (processes x threads), so a swap to the next version, a restart or a sibling API
process does not pay for it again; a file lock makes sibling processes that load together
measure once, not at the same time (which would load the cores twice over).
INFER_MAX_BATCH and INFER_MAX_BATCH_TOKENS, where set, override it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import random
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from app.core.config import Settings
from app.ml.modeling import Classifier
from app.ml.serving_forms import Form
from app.serving.batch_bounds import (
    BatchBounds,
    fixed_bounds,
    plan_forward_passes,
)

log = logging.getLogger(__name__)

TUNING_FOLDER = ".batch-tuning"
# The bounds tried. Texts: passes larger than the largest tried were slower per text on
# every CPU measured (docs/benchmarks.md). Tokens: only matter for long texts, and bound
# the memory of one pass.
TEXT_BOUNDS = (1, 2, 4, 8, 16, 32)
TOKEN_BOUNDS = (1024, 2048, 4096)
# Of the bounds within this share of the fastest, the largest is taken: under load each
# pass also pays what this in-process measurement does not see (a thread hop each way,
# settling the callers' futures, caches the event loop cooled between passes). Where the
# measurement put one text a pass slightly ahead of four, the service served clearly more
# with four, and a narrower margin chose one (docs/benchmarks.md, "Why serving is built
# this way").
WITHIN = 0.10
# Each bound is measured in this many turns, interleaved with the others (see _compare).
ROUNDS = 3
FALLBACK_TEXTS = [
    "thanks for the quick reply, all sorted now",
    "my flight was delayed three hours and nobody told us anything at the gate",
    "where is my bag",
    "the seats were fine, the crew was friendly, but the wifi did not work at all",
]


def cpu_key(threads: int, processes: int = 1) -> str:
    """The CPU a measurement holds for: its model name, its flags and the layout."""
    name, flags = platform.processor(), ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not name:
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].strip()
    digest = hashlib.blake2b(f"{name}|{flags}".encode(), digest_size=6).hexdigest()
    return f"{digest}-{processes}x{threads}"


# What decides a forward pass's speed in config.json; the labels and training facts do not.
SHAPE_FIELDS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
    "num_labels",
)


def model_shape(folder: Path, max_length: int) -> str:
    """A short key of the architecture of the model in `folder`, at `max_length` tokens."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        config = {"folder": str(folder)}
    config["num_labels"] = len(config.get("id2label") or {})
    shape = {name: config.get(name) for name in SHAPE_FIELDS} | {"max_length": max_length}
    text = json.dumps(shape, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def _run(
    classifier: Classifier, texts: Sequence[str], max_texts: int, max_tokens: int, seconds: float
) -> tuple[int, float]:
    """(texts, seconds) of what the server does with `max_texts` texts gathered, for at
    least `seconds`: tokenize once, cut into passes within the bounds, run each pass."""
    done, i = 0, 0
    start = time.perf_counter()
    while True:
        group = [texts[(i + k) % len(texts)] for k in range(max_texts)]
        i += max_texts
        encoded = classifier.encode(group)
        for rows in plan_forward_passes(
            [len(ids) for ids in encoded["input_ids"]], max_texts, max_tokens
        ):
            classifier.logits_for(encoded, rows)
        done += len(group)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done, elapsed


def _pick(results: dict[int, float]) -> int:
    best = max(results.values())
    return max(bound for bound, speed in results.items() if speed >= (1 - WITHIN) * best)


def _compare(
    classifier: Classifier,
    texts: Sequence[str],
    settings: dict[int, tuple[int, int]],
    seconds: float,
    pool: ThreadPoolExecutor,
    lanes: int,
) -> dict[int, float]:
    """Texts/s of each of `settings` (key -> (max_texts, max_tokens)) within `seconds` in
    all, `lanes` passes running at once, summed: ROUNDS turns each, interleaved, and the
    best turn of each kept. Sharing the CPU only ever slows a turn, so the best is the
    closest to the setting's own speed: a sibling process that loads its model meanwhile
    (a core for seconds) slows some turns, not the one setting it overlaps (with one turn
    each, such a load once made the slower of two bounds win)."""
    turn = seconds / (ROUNDS * len(settings))
    best = dict.fromkeys(settings, 0.0)
    for round_ in range(ROUNDS):
        for key, (max_texts, max_tokens) in settings.items():
            runs = [
                # Each lane starts at its own place in the texts: not the same pass twice.
                pool.submit(
                    _run, classifier, texts[lane * 7 + round_ :], max_texts, max_tokens, turn
                )
                for lane in range(lanes)
            ]
            speed = sum(done / elapsed for done, elapsed in (r.result() for r in runs))
            best[key] = max(best[key], speed)
    return best


def _prepared(texts: Sequence[str]) -> list[str]:
    texts = list(texts) or FALLBACK_TEXTS
    texts = random.Random(0).sample(texts, len(texts))
    return texts * max(1, -(-64 // len(texts)))  # room for every lane's own start


def speed_at(
    classifier: Classifier,
    texts: Sequence[str],
    bounds: BatchBounds,
    seconds: float,
    processes: int = 1,
) -> float:
    """Texts/s at `bounds` (set, not measured: the settings'), as `measure` runs each
    bound: one lane per API process, the best of its turns. What two forms of a version
    are compared on where the bounds are fixed."""
    texts = _prepared(texts)
    classifier.logits(texts[:8])  # warm-up
    settings = {0: (bounds.max_texts, bounds.max_tokens)}
    with ThreadPoolExecutor(processes, thread_name_prefix="tuning") as pool:
        return _compare(classifier, texts, settings, seconds, pool, processes)[0]


def measure(
    classifier: Classifier, texts: Sequence[str], seconds: float, processes: int = 1
) -> BatchBounds:
    """Try every text bound, then the token bounds at the chosen one, for `seconds` in all,
    with as many passes at once as the layout has API processes.

    Under load every sibling process runs its passes too, and the fastest bound is not the
    same then: batch 1 won in one process alone and lost to batch 8 with two processes at
    once, and the bound chosen alone served /label clearly less than a larger one
    (docs/benchmarks.md). So the process that measures (its siblings wait: tuned_bounds)
    runs one lane per process of the layout."""
    texts = _prepared(texts)
    share = seconds / (len(TEXT_BOUNDS) + len(TOKEN_BOUNDS))
    started = time.perf_counter()
    classifier.logits(texts[:8])  # warm-up: the first passes pay for lazy set-up
    unbounded = max(TOKEN_BOUNDS)
    with ThreadPoolExecutor(processes, thread_name_prefix="tuning") as pool:

        def compare(settings: dict[int, tuple[int, int]]) -> dict[int, float]:
            return _compare(classifier, texts, settings, share * len(settings), pool, processes)

        by_texts = compare({n: (n, unbounded) for n in TEXT_BOUNDS})
        max_texts = _pick(by_texts)
        by_tokens = compare({n: (max_texts, n) for n in TOKEN_BOUNDS})
    # The same rule: a lower token bound only splits passes, which never helped when it
    # did not bind.
    max_tokens = _pick(by_tokens)
    measured = {f"texts={n}": round(v, 1) for n, v in by_texts.items()}
    measured |= {f"tokens={n}": round(v, 1) for n, v in by_tokens.items()}
    return BatchBounds(
        max_texts, max_tokens, "measured", measured, round(time.perf_counter() - started, 1)
    )


def _acquire(handle: Any, timeout: float | None) -> bool:
    """Lock `handle` exclusively, waiting at most `timeout` seconds (None: for ever);
    whether it was locked."""
    if timeout is None:
        fcntl.flock(handle, fcntl.LOCK_EX)
        return True
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


@contextlib.contextmanager
def _locked(path: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `path`; past `timeout` seconds, go on without it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        locked = _acquire(handle, timeout)
        if not locked:
            log.warning("%s is held for over %.0f s; loading anyway", path, timeout)
        try:
            yield
        finally:
            if locked:
                fcntl.flock(handle, fcntl.LOCK_UN)


def one_load_at_a_time(
    models_path: Path, timeout: float = 120.0
) -> contextlib.AbstractContextManager[None]:
    """A lock the API processes of one machine (one host name) take around loading a
    version: loading takes a core for seconds, and a measurement of the bounds beside a
    sibling's load ran visibly slower during that load than after it. Serving goes on
    with the version already loaded meanwhile."""
    name = f"load-{socket.gethostname()}.lock"
    return _locked(models_path / TUNING_FOLDER / name, timeout)


def tuned_bounds(
    classifier: Classifier,
    texts: Callable[[], Sequence[str]],
    *,
    models_path: Path,
    shape: str,
    form: Form,
    threads: int,
    seconds: float,
    processes: int = 1,
) -> BatchBounds:
    """The cached bounds of (model shape, form, CPU, layout), else measured now on
    `texts()` (read only then) and cached."""
    cache = models_path / TUNING_FOLDER / f"{shape}-{form.key}-{cpu_key(threads, processes)}.json"
    with _locked(cache.with_suffix(".lock")):
        with contextlib.suppress(OSError, ValueError, TypeError):
            data: dict[str, Any] = json.loads(cache.read_text())
            return BatchBounds(**{**data, "source": "cached"})
        bounds = measure(classifier, texts(), seconds, processes)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(bounds)))
        os.replace(tmp, cache)
    log.info(
        "%s on this CPU: micro-batches of up to %s texts / %s tokens (measured in %.1f s: %s)",
        form,
        bounds.max_texts,
        bounds.max_tokens,
        bounds.seconds,
        bounds.measured,
    )
    return bounds


def bounds_for(
    settings: Settings,
    classifier: Classifier,
    texts: Callable[[], Sequence[str]],
    *,
    shape: str,
    form: Form,
) -> BatchBounds:
    """The micro-batch bounds for this version in `form`: the settings', else measured on
    `texts()` (or cached from an earlier measurement of this form on this CPU)."""
    fixed_texts, fixed_tokens = settings.infer_max_batch, settings.infer_max_batch_tokens
    if (fixed_texts and fixed_tokens) or settings.infer_tune_seconds <= 0:
        return fixed_bounds(settings)
    processes, threads = settings.api_layout
    tuned = tuned_bounds(
        classifier,
        texts,
        models_path=settings.models_path,
        shape=shape,
        form=form,
        threads=threads,
        seconds=settings.infer_tune_seconds,
        processes=processes,
    )
    if fixed_texts or fixed_tokens:  # one bound set, the other measured
        return replace(
            tuned,
            max_texts=fixed_texts or tuned.max_texts,
            max_tokens=fixed_tokens or tuned.max_tokens,
            source=f"{tuned.source}, partly settings",
        )
    return tuned
