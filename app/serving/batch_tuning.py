"""Micro-batch bounds measured for the model being loaded, on the CPU it is loaded on.

The fastest micro-batch depends on the model, its form (fp32 or int8), the runtime and the
CPU: on one 2-core machine ONNX Runtime gained nothing past batch 8, on another of the same
kind batch 16 was 1.26x batch 1. So when an API process loads a version it runs the served
form for a few seconds, off the request path (before the swap), on texts like the ones it
will serve (the store's newest, else gold), at a few bounds, and serves with the fastest.

What the measurement chose is cached under MODEL_DIR/.batch-tuning per model shape (the
architecture in config.json: versions retrained from one base share it), form, CPU and
thread count, so a swap to the next version, a restart or a sibling API process does not
pay for it again; a file lock makes sibling processes that load together measure
once, not at the same time (which would halve what each measures). INFER_MAX_BATCH and
INFER_MAX_BATCH_TOKENS, where set, override it.
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
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.ml.modeling import Classifier
from app.serving.batching import plan_forward_passes

log = logging.getLogger(__name__)

TUNING_FOLDER = ".batch-tuning"
# The bounds tried. Texts: a forward pass of more than 32 short texts was slower per text
# than 16 to 32 on every CPU measured (docs/benchmarks.md). Tokens: only matter for long
# texts, and bound the memory of one pass.
TEXT_BOUNDS = (1, 2, 4, 8, 16, 32)
TOKEN_BOUNDS = (1024, 2048, 4096)
# Used where nothing is measured (INFER_TUNE_SECONDS=0, or a loader without a store).
DEFAULT_MAX_TEXTS = 8
DEFAULT_MAX_TOKENS = 2048
# Of the bounds within this share of the fastest, the largest is taken: under load each
# pass also pays what this in-process measurement does not see (a thread hop each way,
# settling the callers' futures). Taking the smallest instead chose 2 texts in one run of
# `make bench` part 7, whose /label at concurrency 32 then served 8% less than a fixed 4.
WITHIN = 0.03
FALLBACK_TEXTS = [
    "thanks for the quick reply, all sorted now",
    "my flight was delayed three hours and nobody told us anything at the gate",
    "where is my bag",
    "the seats were fine, the crew was friendly, but the wifi did not work at all",
]


@dataclass(frozen=True)
class BatchBounds:
    """The micro-batcher's bounds for one loaded model, and where they came from."""

    max_texts: int
    max_tokens: int
    # "measured" (now), "cached" (an earlier measurement of this form on this CPU),
    # "settings" (INFER_MAX_BATCH / INFER_MAX_BATCH_TOKENS), "default" (not measured).
    source: str
    # texts/s per bound tried, e.g. {"texts=8": 180.1, "tokens=2048": 181.0}
    measured: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def cpu_key(threads: int) -> str:
    """The CPU a measurement holds for: its model name, its flags and the thread count."""
    name, flags = platform.processor(), ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not name:
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].strip()
    digest = hashlib.blake2b(f"{name}|{flags}|{threads}".encode(), digest_size=6).hexdigest()
    return f"{digest}-t{threads}"


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


def _throughput(
    classifier: Classifier, texts: Sequence[str], max_texts: int, max_tokens: int, seconds: float
) -> float:
    """Texts/s of what the server does with `max_texts` texts gathered: tokenize once, cut
    into passes within the bounds, run each pass."""
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
            return done / elapsed


def _pick(results: dict[int, float]) -> int:
    best = max(results.values())
    return max(bound for bound, speed in results.items() if speed >= (1 - WITHIN) * best)


def measure(classifier: Classifier, texts: Sequence[str], seconds: float) -> BatchBounds:
    """Try every text bound, then the token bounds at the chosen one, for `seconds` in all."""
    texts = list(texts) or FALLBACK_TEXTS
    texts = random.Random(0).sample(texts, len(texts))
    each = seconds / (len(TEXT_BOUNDS) + len(TOKEN_BOUNDS))
    started = time.perf_counter()
    classifier.logits(texts[:8])  # warm-up: the first passes pay for lazy set-up
    unbounded = max(TOKEN_BOUNDS)
    by_texts = {n: _throughput(classifier, texts, n, unbounded, each) for n in TEXT_BOUNDS}
    max_texts = _pick(by_texts)
    by_tokens = {n: _throughput(classifier, texts, max_texts, n, each) for n in TOKEN_BOUNDS}
    # The same rule: a lower token bound only splits passes, which never helped when it
    # did not bind.
    max_tokens = _pick(by_tokens)
    measured = {f"texts={n}": round(v, 1) for n, v in by_texts.items()}
    measured |= {f"tokens={n}": round(v, 1) for n, v in by_tokens.items()}
    return BatchBounds(
        max_texts, max_tokens, "measured", measured, round(time.perf_counter() - started, 1)
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tuned_bounds(
    classifier: Classifier,
    texts: Callable[[], Sequence[str]],
    *,
    models_path: Path,
    shape: str,
    form: str,
    threads: int,
    seconds: float,
) -> BatchBounds:
    """The cached bounds of (model shape, form, CPU, threads), else measured now on
    `texts()` (read only then) and cached."""
    cache = models_path / TUNING_FOLDER / f"{shape}-{form}-{cpu_key(threads)}.json"
    with _locked(cache.with_suffix(".lock")):
        with contextlib.suppress(OSError, ValueError, TypeError):
            data: dict[str, Any] = json.loads(cache.read_text())
            return BatchBounds(**{**data, "source": "cached"})
        bounds = measure(classifier, texts(), seconds)
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
