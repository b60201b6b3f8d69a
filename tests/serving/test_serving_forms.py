"""The int8 form built at publish time, its quality gate, and the self-tuned micro-batch
bounds: what an operator reads in /models/active, the model card and the metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.config import Settings
from app.ml import training
from app.ml.modeling import load_classifier
from app.ml.serving_forms import (
    BF16_FORM,
    FORMS_FILE,
    INT8_FILE,
    bf16_gate,
    build_forms,
    choose_form,
)
from app.registry import version_dir
from app.registry.card import form_rows
from app.serving.batch_tuning import (
    TEXT_BOUNDS,
    TOKEN_BOUNDS,
    WITHIN,
    measure,
    model_shape,
    tuned_bounds,
)
from app.serving.model_server import ModelServer, ServedModel
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
    # bf16 is scored where the publishing CPU computes it, and says so where it does not.
    assert "serving form bf16" in card
    if training.cpu_has_fast_bf16():
        assert 0.0 <= record["bf16"]["dev_macro_f1"] <= 1.0 and "bf16_drop_points" in record
    else:
        assert "publishing CPU has none of" in record["bf16"]["unavailable"]


def _record(
    folder: Path, drop: float | None, int8: bool = True, bf16_drop: float | None = None
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(b"x")
    if int8:
        (folder / INT8_FILE).write_bytes(b"x")
    record: dict[str, object] = {"fp32": {"dev_macro_f1": 0.8}, "int8": {}, "bf16": {}}
    if drop is not None:
        record["int8_drop_points"] = drop
    if bf16_drop is not None:
        record["bf16_drop_points"] = bf16_drop
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


@pytest.mark.parametrize(
    ("cpu_has_bf16", "policy", "drop", "allowed", "why"),
    [
        (True, "gated", 0.2, True, "within 0.5 points of fp32 (+0.20 drop)"),
        (True, "gated", 0.9, False, "0.90 points below fp32 (limit 0.5)"),
        (True, "gated", None, False, "bf16 not served unscored"),
        (True, "always", 5.0, True, "INFER_BF16=always (not gated)"),
        (True, "never", 0.0, False, "INFER_BF16=never"),
        # Emulated bf16 ran at a sixth of fp32's speed: never a candidate, even if asked.
        (False, "gated", 0.0, False, "none of avx512_bf16, amx_bf16"),
        (False, "always", 0.0, False, "none of avx512_bf16, amx_bf16"),
    ],
)
def test_bf16_is_a_candidate_only_on_a_cpu_with_it_and_within_the_margin(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cpu_has_bf16: bool,
    policy: str,
    drop: float | None,
    allowed: bool,
    why: str,
) -> None:
    monkeypatch.setattr(training, "cpu_has_fast_bf16", lambda: cpu_has_bf16)
    _record(tmp_path, 0.1, bf16_drop=drop)
    served, reason = bf16_gate(tmp_path, policy, 0.5)  # type: ignore[arg-type]
    assert served == allowed
    assert why in reason


@pytest.mark.parametrize("cpu_has_bf16", [True, False])
def test_publishing_scores_bf16_where_the_cpu_computes_it(
    published_copy: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_has_bf16: bool
) -> None:
    import shutil

    monkeypatch.setattr(training, "cpu_has_fast_bf16", lambda: cpu_has_bf16)
    folder = tmp_path / "v"
    shutil.copytree(version_dir(published_copy, 1), folder)
    dev = [list(column) for column in zip(*synthetic_texts(60, 7), strict=True)]
    record = build_forms(folder, published_copy.max_length, (dev[0], dev[1]))
    rows = dict(form_rows(record))
    if cpu_has_bf16:
        f1 = record["bf16"]["dev_macro_f1"]
        assert 0.0 <= f1 <= 1.0
        assert record["bf16_drop_points"] == pytest.approx(
            100 * (record["fp32"]["dev_macro_f1"] - f1), abs=0.01
        )
        assert f"dev macro-F1 {f1} (PyTorch, 60 texts)" in rows["serving form bf16"]
    else:
        assert "bf16_drop_points" not in record
        assert "publishing CPU has none of" in rows["serving form bf16"]
    assert json.loads((folder / FORMS_FILE).read_text()) == record


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
        assert current.form_reason == f"{expected.reason}; not bf16: INFER_BF16=never"
        assert current.compared == {}
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
        assert server.current.form_reason == "INFER_INT8=never; not bf16: INFER_BF16=never"
    finally:
        store.dispose()


@contextlib.contextmanager
def _served_on_a_bf16_cpu(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    drop: float | None = None,
    **update: object,
) -> Iterator[ServedModel]:
    """What a ModelServer loads of v1 where the CPU computes bf16, with v1's bf16 form
    scored `drop` points below fp32 at publish (unscored: None)."""
    monkeypatch.setattr(training, "cpu_has_fast_bf16", lambda: True)
    if drop is not None:
        path = version_dir(settings, 1) / FORMS_FILE
        record = json.loads(path.read_text())
        record["bf16"] = {"dev_macro_f1": record["fp32"]["dev_macro_f1"] - drop / 100}
        record["bf16_drop_points"] = drop
        path.chmod(0o644)
        path.write_text(json.dumps(record))
    server, store = _started(settings.model_copy(update=update))
    try:
        assert server.current is not None
        yield server.current
    finally:
        store.dispose()


@pytest.mark.parametrize("fixed_bounds", [False, True])
def test_with_bf16_allowed_both_forms_are_measured_and_the_faster_serves(
    published_copy: Settings, monkeypatch: pytest.MonkeyPatch, fixed_bounds: bool
) -> None:
    """Measured with their own tuned bounds, or (bounds set) both at the set bounds."""
    fixed = {"infer_max_batch": 4, "infer_max_batch_tokens": 512} if fixed_bounds else {}
    with _served_on_a_bf16_cpu(
        published_copy, monkeypatch, 0.1, infer_bf16="gated", **fixed
    ) as current:
        if fixed_bounds:
            bounds = current.bounds
            assert (bounds.max_texts, bounds.max_tokens, bounds.source) == (4, 512, "settings")
        onnx = f"onnxruntime {choose_form(version_dir(published_copy, 1), 'gated', 0.5).form}"
        assert set(current.compared) == {onnx, BF16_FORM}
        fastest = max(current.compared.values())
        assert current.compared[current.form] >= (1 - WITHIN) * fastest
        assert current.bounds.texts_per_s == current.compared[current.form]
        assert "measured here" in current.form_reason
        # What serves is that form: bf16 weights under PyTorch, or an ONNX Runtime session.
        is_torch = hasattr(current.classifier.model, "parameters")
        assert is_torch == (current.form == BF16_FORM)


def test_bf16_always_serves_bf16_weights_that_still_label(
    published_copy: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    with _served_on_a_bf16_cpu(published_copy, monkeypatch, infer_bf16="always") as current:
        assert (current.form, current.form_reason) == (BF16_FORM, "INFER_BF16=always (not gated)")
        assert next(current.classifier.model.parameters()).dtype == torch.bfloat16
        texts = [t for t, _ in synthetic_texts(6, 9)]
        assert set(current.classifier.predict(texts)) <= set(current.classifier.labels)


def test_bf16_beyond_the_margin_is_not_a_candidate(
    published_copy: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _served_on_a_bf16_cpu(published_copy, monkeypatch, 2.0, infer_bf16="gated") as current:
        assert current.form.startswith("onnxruntime")
        assert current.compared == {}
        assert "not bf16: bf16 dev macro-F1 2.00 points below fp32 (limit 0.5)" in (
            current.form_reason
        )


@pytest.mark.parametrize(
    ("onnx", "bf16", "served", "note"),
    [
        # Within 10% of the fastest with larger passes: fewer passes cost the service less.
        ((634.0, 8), (621.0, 32), BF16_FORM, "within 10% of the fastest, with larger passes"),
        ((634.0, 8), (500.0, 32), "onnxruntime int8", None),
        ((700.0, 32), (690.0, 16), "onnxruntime int8", None),
        ((300.0, 4), (790.0, 32), BF16_FORM, None),
    ],
)
def test_the_form_served_is_the_fastest_or_nearly_so_with_larger_passes(
    published_copy: Settings,
    onnx: tuple[float, int],
    bf16: tuple[float, int],
    served: str,
    note: str | None,
) -> None:
    from app.serving.batch_tuning import BatchBounds

    server = ModelServer(published_copy, Store(published_copy.store_url))
    classifier = load_classifier(version_dir(published_copy, 1), published_copy.max_length)

    def form(name: str, speed: float, texts: int) -> ServedModel:
        bounds = BatchBounds(texts, 4096, "measured", {"tokens=4096": speed})
        return ServedModel(1, classifier, name, f"{name} passed its gate", bounds)

    chosen = server._faster([form("onnxruntime int8", *onnx), form(BF16_FORM, *bf16)])
    assert chosen.form == served
    assert chosen.compared == {"onnxruntime int8": onnx[0], BF16_FORM: bf16[0]}
    assert chosen.form_reason.startswith(f"{served} passed its gate; measured here")
    if note:
        assert note in chosen.form_reason
    else:
        assert "within" not in chosen.form_reason
