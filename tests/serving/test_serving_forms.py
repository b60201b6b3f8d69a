"""The int8 form built at publish time, its quality gate, and the self-tuned micro-batch
bounds: what an operator reads in /models/active, the model card and the metrics."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from app.core.config import Settings
from app.ml.modeling import load_classifier
from app.ml.serving_forms import FORMS_FILE, INT8_FILE, build_forms, choose_form
from app.registry import version_dir
from app.serving.batch_tuning import (
    TEXT_BOUNDS,
    TOKEN_BOUNDS,
    WITHIN,
    measure,
    model_shape,
    tuned_bounds,
)
from app.serving.model_server import ModelServer
from app.store.database import Store
from tests.conftest import synthetic_texts


def test_published_version_has_both_forms_scored_on_dev(published_copy: Settings) -> None:
    """Bootstrap published v1 with fp32 and int8 ONNX forms, both scored on the gold dev
    set, before the folder appeared; the card says so."""
    folder = version_dir(published_copy, 1)
    record = json.loads((folder / FORMS_FILE).read_text())
    assert (folder / "model.onnx").is_file() and (folder / INT8_FILE).is_file()
    assert record["dev_n"] > 0
    for form in ("fp32", "int8"):
        assert 0.0 <= record[form]["dev_macro_f1"] <= 1.0
    expected = 100 * (record["fp32"]["dev_macro_f1"] - record["int8"]["dev_macro_f1"])
    assert record["int8_drop_points"] == pytest.approx(expected, abs=0.01)
    card = (folder / "README.md").read_text()
    assert "serving form int8" in card and "`model.int8.onnx`" in card


def _record(folder: Path, drop: float | None, int8: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(b"x")
    if int8:
        (folder / INT8_FILE).write_bytes(b"x")
    record: dict[str, object] = {"fp32": {"dev_macro_f1": 0.8}, "int8": {}}
    if drop is not None:
        record["int8_drop_points"] = drop
    (folder / FORMS_FILE).write_text(json.dumps(record))


@pytest.mark.parametrize(
    ("drop", "policy", "served", "why"),
    [
        (0.3, "gated", "int8", "within 0.5 points"),
        (0.5, "gated", "int8", "within 0.5 points"),
        (0.8, "gated", "fp32", "0.80 points below fp32 (limit 0.5)"),
        (None, "gated", "fp32", "not served unscored"),
        (0.8, "always", "int8", "not gated"),
        (0.1, "never", "fp32", "INFER_INT8=never"),
    ],
)
def test_the_gate_serves_int8_only_within_the_margin(
    tmp_path: Path, drop: float | None, policy: str, served: str, why: str
) -> None:
    _record(tmp_path, drop)
    choice = choose_form(tmp_path, policy, 0.5)  # type: ignore[arg-type]
    assert choice.form == served
    assert why in choice.reason


def test_a_version_without_an_int8_form_serves_fp32(tmp_path: Path) -> None:
    _record(tmp_path, 0.1, int8=False)
    assert choose_form(tmp_path, "gated", 0.5).form == "fp32"
    (tmp_path / FORMS_FILE).unlink()
    assert choose_form(tmp_path, "always", 0.5).reason == "published without an int8 form"


def test_forms_without_a_dev_set_are_built_but_not_served_by_the_gate(
    published_copy: Settings, tmp_path: Path
) -> None:
    import shutil

    folder = tmp_path / "v"
    shutil.copytree(version_dir(published_copy, 1), folder)
    for name in ("model.onnx", INT8_FILE, FORMS_FILE):
        (folder / name).unlink()
    record = build_forms(folder, published_copy.max_length, None)
    assert (folder / INT8_FILE).is_file()
    assert "dev_macro_f1" not in record["int8"] and "no gold dev set" in record["note"]
    assert choose_form(folder, "gated", 0.5).form == "fp32"


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
    first = tuned_bounds(classifier, lambda: texts, form="onnxruntime-int8", **kw)  # type: ignore[arg-type]
    again = tuned_bounds(classifier, lambda: texts, form="onnxruntime-int8", **kw)  # type: ignore[arg-type]
    other = tuned_bounds(classifier, lambda: texts, form="onnxruntime-fp32", **kw)  # type: ignore[arg-type]
    assert (first.source, again.source, other.source) == ("measured", "cached", "measured")
    assert (again.max_texts, again.max_tokens) == (first.max_texts, first.max_tokens)


def _started(settings: Settings) -> tuple[ModelServer, Store]:
    store = Store(settings.store_url)
    server = ModelServer(settings, store)

    async def start() -> None:
        await server.start()
        await server.stop()  # what start() loaded stays in server.current

    asyncio.run(start())
    return server, store


def test_server_serves_the_gated_form_with_tuned_bounds(published_copy: Settings) -> None:
    server, store = _started(published_copy.model_copy(update={"infer_tune_seconds": 0.5}))
    try:
        current = server.current
        assert current is not None
        expected = choose_form(version_dir(published_copy, 1), "gated", 0.5)
        assert current.form == f"onnxruntime {expected.form}"
        assert current.form_reason == expected.reason
        assert current.bounds.source in ("measured", "cached")
        assert current.bounds.max_texts in TEXT_BOUNDS
    finally:
        store.dispose()


def test_settings_override_the_tuned_bounds(published_copy: Settings) -> None:
    fixed = published_copy.model_copy(
        update={"infer_max_batch": 3, "infer_max_batch_tokens": 96, "infer_int8": "never"}
    )
    server, store = _started(fixed)
    try:
        assert server.current is not None
        bounds = server.current.bounds
        assert (bounds.max_texts, bounds.max_tokens, bounds.source) == (3, 96, "settings")
        assert server.current.form == "onnxruntime fp32"
        assert server.current.form_reason == "INFER_INT8=never"
    finally:
        store.dispose()
