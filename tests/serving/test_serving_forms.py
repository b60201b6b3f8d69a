"""The forms a version is published with: the ONNX export and its int8 quantization, each
scored on the gold dev set, bf16 scored where the publishing CPU computes it; and the one
place their names are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.core.config import Settings
from app.ml import training
from app.ml.serving_forms import (
    FORMS_FILE,
    FP32_FILE,
    INT8_FILE,
    Form,
    build_forms,
    load_form,
    quantize_onnx,
)
from app.registry import version_dir
from app.registry.card import form_rows
from app.serving.form_choice import int8_gate
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
    assert int8_gate(folder, "gated", 0.5).form == Form.ONNX_FP32


def test_every_form_has_a_file_key_and_loads_by_its_name(published_copy: Settings) -> None:
    """The form names operators read load the form they name, and key files without
    spaces; the ONNX forms are the files publishing wrote."""
    import torch

    folder = version_dir(published_copy, 1)
    assert len({form.key for form in Form}) == len(Form)
    assert all(" " not in form.key for form in Form)
    assert (Form.ONNX_FP32.onnx_file, Form.ONNX_INT8.onnx_file) == (FP32_FILE, INT8_FILE)
    texts = ["@united lost my bag", "great crew, thanks"]
    for form in Form:
        classifier = load_form(folder, form, published_copy.max_length, 1)
        onnx = not hasattr(classifier.model, "parameters")
        assert onnx == (form.onnx_file is not None), form
        if form is Form.TORCH_BF16:
            assert next(classifier.model.parameters()).dtype == torch.bfloat16
        assert set(classifier.predict(texts)) <= set(classifier.labels)


@pytest.mark.parametrize(("level", "shown"), [("info", False), ("debug", True)])
def test_quantizing_keeps_onnx_runtimes_chatter_out_of_the_log_above_debug(
    published_copy: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    level: str,
    shown: bool,
) -> None:
    """ONNX Runtime's quantization logs a line per tensor it leaves alone (INFO) and advice
    to its developers (WARNING), through the root logger: an operator never sees them,
    LOG_LEVEL=debug still shows them."""
    import logging

    from app.core import logs

    root = logging.getLogger()
    before = root.level
    logs.configure_logging(published_copy.model_copy(update={"log_level": level}))
    try:
        capsys.readouterr()
        quantize_onnx(version_dir(published_copy, 1) / FP32_FILE, tmp_path / INT8_FILE)
        err = capsys.readouterr().err
    finally:
        for handler in [h for h in root.handlers if isinstance(h, logs.ServiceLogHandler)]:
            root.removeHandler(handler)
        root.setLevel(before)
    chatter = [line for line in err.splitlines() if "Quantization parameters for tensor" in line]
    advice = [line for line in err.splitlines() if "pre-processing before quantization" in line]
    if shown:
        assert chatter and all(" DEBUG " in line for line in chatter), err[-2000:]
        assert advice and all(" DEBUG " in line for line in advice), err[-2000:]
    else:
        assert chatter == [] and advice == [], (chatter + advice)[:3]
