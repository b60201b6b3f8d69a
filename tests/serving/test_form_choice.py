"""Which form serves: the quality gates, the candidates, and the comparison that picks
between them; what an operator reads in /models/active and the model card."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.config import Settings
from app.ml import training
from app.ml.modeling import load_classifier
from app.ml.serving_forms import FORMS_FILE, INT8_FILE, Form
from app.registry import version_dir
from app.serving.batch_bounds import BatchBounds
from app.serving.batch_tuning import TEXT_BOUNDS, WITHIN
from app.serving.form_choice import ServedModel, bf16_gate, fastest, int8_gate
from app.serving.model_server import ModelServer
from app.serving.version_loader import VersionLoader
from app.store.database import Store
from app.store.pseudo_labels import texts_like_served
from tests.conftest import synthetic_texts


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
        (0.3, "gated", Form.ONNX_INT8, "within 0.5 points"),
        (0.5, "gated", Form.ONNX_INT8, "within 0.5 points"),
        (0.8, "gated", Form.ONNX_FP32, "0.80 points below fp32 (limit 0.5)"),
        (None, "gated", Form.ONNX_FP32, "not served unscored"),
        (0.8, "always", Form.ONNX_INT8, "not gated"),
        (0.1, "never", Form.ONNX_FP32, "INFER_INT8=never"),
    ],
)
def test_the_gate_serves_int8_only_within_the_margin(
    tmp_path: Path, drop: float | None, policy: str, served: Form, why: str
) -> None:
    _record(tmp_path, drop)
    choice = int8_gate(tmp_path, policy, 0.5)  # type: ignore[arg-type]
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


def test_a_version_without_an_int8_form_serves_fp32(tmp_path: Path) -> None:
    _record(tmp_path, 0.1, int8=False)
    assert int8_gate(tmp_path, "gated", 0.5).form == Form.ONNX_FP32
    (tmp_path / FORMS_FILE).unlink()
    assert int8_gate(tmp_path, "always", 0.5).reason == "published without an int8 form"


def _started(settings: Settings) -> tuple[ModelServer, Store]:
    store = Store(settings.store_url)

    def sample_texts() -> list[str]:
        with store.session() as session:
            return texts_like_served(session)

    server = ModelServer(settings, store, VersionLoader(settings, sample_texts))

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
        expected = int8_gate(version_dir(published_copy, 1), "gated", 0.5)
        assert current.form == expected.form
        assert current.form_reason == f"{expected.reason}; not bf16: INFER_BF16=never"
        assert current.compared == {}
        assert current.bounds.source in ("measured", "cached")
        assert current.bounds.max_texts in TEXT_BOUNDS
    finally:
        store.dispose()


def test_the_bounds_are_measured_on_the_texts_serving_is_given(published_copy: Settings) -> None:
    """Serving reads no store for its measurement: it measures on the texts the callable it
    was given at wiring time returns, asked only when it measures (not once cached)."""
    asked: list[int] = []

    def sample_texts() -> list[str]:
        asked.append(1)
        return [t for t, _ in synthetic_texts(32, 5)]

    loader = VersionLoader(published_copy, sample_texts)
    assert loader(1).bounds.source == "measured" and asked == [1]
    assert loader(1).bounds.source == "cached" and asked == [1]


def test_settings_override_the_tuned_bounds(published_copy: Settings) -> None:
    fixed = published_copy.model_copy(
        update={"infer_max_batch": 3, "infer_max_batch_tokens": 96, "infer_int8": "never"}
    )
    server, store = _started(fixed)
    try:
        assert server.current is not None
        bounds = server.current.bounds
        assert (bounds.max_texts, bounds.max_tokens, bounds.source) == (3, 96, "settings")
        assert server.current.form == Form.ONNX_FP32
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
        onnx = int8_gate(version_dir(published_copy, 1), "gated", 0.5).form
        assert set(current.compared) == {onnx, Form.TORCH_BF16}
        fastest = max(current.compared.values())
        assert current.compared[current.form] >= (1 - WITHIN) * fastest
        assert current.bounds.texts_per_s == current.compared[current.form]
        assert "measured here" in current.form_reason
        # What serves is that form: bf16 weights under PyTorch, or an ONNX Runtime session.
        is_torch = hasattr(current.classifier.model, "parameters")
        assert is_torch == (current.form == Form.TORCH_BF16)


def test_bf16_always_serves_bf16_weights_that_still_label(
    published_copy: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    with _served_on_a_bf16_cpu(published_copy, monkeypatch, infer_bf16="always") as current:
        assert (current.form, current.form_reason) == (
            Form.TORCH_BF16,
            "INFER_BF16=always (not gated)",
        )
        assert next(current.classifier.model.parameters()).dtype == torch.bfloat16
        texts = [t for t, _ in synthetic_texts(6, 9)]
        assert set(current.classifier.predict(texts)) <= set(current.classifier.labels)


def test_bf16_beyond_the_margin_is_not_a_candidate(
    published_copy: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _served_on_a_bf16_cpu(published_copy, monkeypatch, 2.0, infer_bf16="gated") as current:
        assert current.form in (Form.ONNX_INT8, Form.ONNX_FP32)
        assert current.compared == {}
        assert "not bf16: bf16 dev macro-F1 2.00 points below fp32 (limit 0.5)" in (
            current.form_reason
        )


@pytest.mark.parametrize(
    ("onnx", "bf16", "served", "note"),
    [
        # Within 10% of the fastest with larger passes: fewer passes cost the service less.
        ((634.0, 8), (621.0, 32), Form.TORCH_BF16, "within 10% of the fastest, with larger passes"),
        ((634.0, 8), (500.0, 32), Form.ONNX_INT8, None),
        ((700.0, 32), (690.0, 16), Form.ONNX_INT8, None),
        ((300.0, 4), (790.0, 32), Form.TORCH_BF16, None),
    ],
)
def test_the_form_served_is_the_fastest_or_nearly_so_with_larger_passes(
    published_copy: Settings,
    onnx: tuple[float, int],
    bf16: tuple[float, int],
    served: Form,
    note: str | None,
) -> None:
    classifier = load_classifier(version_dir(published_copy, 1), published_copy.max_length)

    def form(name: Form, speed: float, texts: int) -> ServedModel:
        bounds = BatchBounds(texts, 4096, "measured", {"tokens=4096": speed})
        return ServedModel(1, classifier, name, f"{name} passed its gate", bounds)

    chosen = fastest([form(Form.ONNX_INT8, *onnx), form(Form.TORCH_BF16, *bf16)])
    assert chosen.form == served
    assert chosen.compared == {Form.ONNX_INT8: onnx[0], Form.TORCH_BF16: bf16[0]}
    assert chosen.form_reason.startswith(f"{served} passed its gate; measured here")
    if note:
        assert note in chosen.form_reason
    else:
        assert "within" not in chosen.form_reason
