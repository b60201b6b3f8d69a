"""The micro-batch bounds measured for a loaded model on this CPU, and cached."""

from __future__ import annotations

import time
from pathlib import Path

from app.core.config import Settings
from app.ml.modeling import load_classifier
from app.ml.serving_forms import Form
from app.registry import version_dir
from app.serving.batch_tuning import (
    TEXT_BOUNDS,
    TOKEN_BOUNDS,
    WITHIN,
    measure,
    model_shape,
    tuned_bounds,
)
from tests.conftest import synthetic_texts


def test_measure_picks_bounds_from_those_tried(published_copy: Settings) -> None:
    classifier = load_classifier(version_dir(published_copy, 1), published_copy.max_length)
    texts = [t for t, _ in synthetic_texts(64, 3)]
    bounds = measure(classifier, texts, seconds=0.9)
    assert bounds.source == "measured"
    assert bounds.max_texts in TEXT_BOUNDS and bounds.max_tokens in TOKEN_BOUNDS
    assert set(bounds.measured) == {f"texts={n}" for n in TEXT_BOUNDS} | {
        f"tokens={n}" for n in TOKEN_BOUNDS
    }
    # The bound chosen is within reach of the fastest one tried.
    fastest = max(v for k, v in bounds.measured.items() if k.startswith("texts="))
    assert bounds.measured[f"texts={bounds.max_texts}"] >= (1 - WITHIN) * fastest - 0.1


class _SlowStart:
    """A stand-in classifier whose passes cost a known time per text (one text at a time
    is the fastest), and twice that for the first 40% of the measurement, as when a
    sibling process loads its model beside the one measuring."""

    def __init__(self, seconds: float) -> None:
        self.started = time.perf_counter()
        self.slow_until = self.started + 0.4 * seconds

    def logits(self, texts: list[str]) -> None:
        pass

    def encode(self, texts: list[str]) -> dict[str, list[list[int]]]:
        return {"input_ids": [[1, 2, 3] for _ in texts]}

    def logits_for(self, encoded: dict[str, list[list[int]]], rows: list[int]) -> None:
        per_text = 0.002 if len(rows) == 1 else 0.0026
        slowdown = 2.0 if time.perf_counter() < self.slow_until else 1.0
        time.sleep(per_text * len(rows) * slowdown)


def test_measure_is_not_fooled_by_a_slow_start() -> None:
    """Every bound is measured in turns spread over the whole time, so a busy first second
    slows them all alike and the fastest bound (1 text) still wins."""
    seconds = 1.2
    bounds = measure(_SlowStart(seconds), ["a text"] * 64, seconds)  # type: ignore[arg-type]
    assert bounds.max_texts == 1, bounds.measured


def test_tuning_is_cached_per_model_shape_form_and_cpu(published_copy: Settings) -> None:
    classifier = load_classifier(version_dir(published_copy, 1), published_copy.max_length)
    texts = [t for t, _ in synthetic_texts(32, 4)]
    shape = model_shape(version_dir(published_copy, 1), published_copy.max_length)
    kw = {"models_path": published_copy.models_path, "shape": shape, "threads": 1, "seconds": 0.5}
    first = tuned_bounds(classifier, lambda: texts, form=Form.ONNX_INT8, **kw)  # type: ignore[arg-type]
    again = tuned_bounds(classifier, lambda: texts, form=Form.ONNX_INT8, **kw)  # type: ignore[arg-type]
    other = tuned_bounds(classifier, lambda: texts, form=Form.ONNX_FP32, **kw)  # type: ignore[arg-type]
    assert (first.source, again.source, other.source) == ("measured", "cached", "measured")
    assert (again.max_texts, again.max_tokens) == (first.max_texts, first.max_tokens)


def test_sibling_processes_load_one_at_a_time_and_a_stuck_one_is_waited_for_only_so_long(
    tmp_path: Path,
) -> None:
    from app.serving.batch_tuning import one_load_at_a_time

    with one_load_at_a_time(tmp_path, timeout=5):
        started = time.monotonic()
        # Another holder (a sibling process: flock locks per open file) waits, then goes on.
        with one_load_at_a_time(tmp_path, timeout=0.3):
            waited = time.monotonic() - started
    assert 0.3 <= waited < 3
    started = time.monotonic()
    with one_load_at_a_time(tmp_path, timeout=5):  # released: no wait
        assert time.monotonic() - started < 0.2
