"""The forms a version can be served in (`Form`, the one place their names are written),
built once when the version is published, and loaded by name.

Publishing writes, into the version's temporary folder before it is renamed into place:
- `model.onnx`: the fp32 ONNX export (app/ml/onnx_runtime.py);
- `model.int8.onnx`: the same graph through ONNX Runtime's dynamic quantization of its
  matrix products (int8 weights per output channel, activations quantized per batch as
  they come; the embeddings stay fp32);
- `serving_forms.json`: both forms scored on the gold dev set by ONNX Runtime, the drop of
  int8's macro-F1 from fp32's, and how long each took to build; and, where the publishing
  CPU computes bf16 natively (AMX or avx512_bf16), the model's weights in bfloat16 under
  PyTorch (`Form.TORCH_BF16`, cast at load: no file) scored the same way.

Which form an API process serves, from this record, the settings and its CPU, is decided
in app/serving/form_choice.py; it says which and why (`GET /models/active`, the
dashboard, `pfp_served_form` in the metrics).

Why this quantization (the measurements are in docs/benchmarks.md, "Serving forms"): on
fully trained models of the demo data, quantizing only the MatMuls per output channel
kept dev macro-F1 within the gate and ran well ahead of fp32. ONNX Runtime's default also
quantizes the embedding tables, a lookup that int8 does not speed up, and lost more
quality; per-tensor weights lost more still; uint8 weights kept quality but ran no faster
than fp32 on a CPU with AVX-512 VNNI. Static quantization (calibrated activations) was
not measured.
"""

from __future__ import annotations

import json
import logging
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the form names stay cheap to import: no torch for them
    from app.ml.modeling import Classifier

log = logging.getLogger(__name__)

FORMS_FILE = "serving_forms.json"
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
# The quantization every new version's int8 form is built with (what the gate judges).
INT8_METHOD: dict[str, Any] = {
    "kind": "dynamic",
    "weights": "QInt8",
    "per_channel": True,
    "reduce_range": False,
    "ops": ["MatMul"],
}

# INFER_INT8 and INFER_BF16: serve the form where its gate passes, never, or always.
FormPolicy = Literal["gated", "never", "always"]
BF16_FLAGS = "avx512_bf16, amx_bf16"


class Form(StrEnum):
    """A form an API process can serve a version in: the runtime and the precision it runs
    in. The one place form names are written: its value is what operators read
    (`served_form` in `GET /models/active`, the `pfp_served_form` metric, the bench)."""

    ONNX_INT8 = "onnxruntime int8"
    ONNX_FP32 = "onnxruntime fp32"
    TORCH_FP32 = "torch fp32"
    TORCH_INT8 = "torch int8"
    TORCH_BF16 = "torch bf16"

    @property
    def key(self) -> str:
        """The form in file names (the cache of measured micro-batch bounds): no spaces."""
        return self.value.replace(" ", "-")

    @property
    def onnx_file(self) -> str | None:
        """The file publishing wrote this form to, for the ONNX forms (None for PyTorch's,
        which are made from the weights at load)."""
        return {Form.ONNX_FP32: FP32_FILE, Form.ONNX_INT8: INT8_FILE}.get(self)


def quantize_onnx(source: Path, target: Path) -> None:
    """`target`: `source` with its MatMul weights quantized to int8 per output channel."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        source,
        target,
        op_types_to_quantize=INT8_METHOD["ops"],
        per_channel=INT8_METHOD["per_channel"],
        reduce_range=INT8_METHOD["reduce_range"],
        weight_type=getattr(QuantType, INT8_METHOD["weights"]),
    )


def dev_macro_f1(
    classifier: Classifier, folder: Path, file: str, dev: tuple[list[str], list[str]]
) -> float:
    """Macro-F1 on the dev set of `classifier` served by ONNX Runtime from `folder/file`,
    as an API process would serve it."""
    from app.ml.onnx_runtime import onnx_classifier
    from app.ml.training import evaluate

    texts, labels = dev
    return float(
        evaluate(onnx_classifier(classifier, folder, None, file), texts, labels)["macro_f1"]
    )


def build_forms(
    folder: Path, max_length: int, dev: tuple[list[str], list[str]] | None
) -> dict[str, Any]:
    """Export, quantize and score the serving forms of the model in `folder` (a version
    being published), and write `serving_forms.json`. Returns what it wrote.

    Nothing here is allowed to fail the publication: a form that cannot be built is
    recorded with the reason, and API processes then serve a form that was built (or
    PyTorch, where neither was).
    """
    from app.ml.modeling import load_classifier
    from app.ml.onnx_runtime import export_onnx, first_line

    record: dict[str, Any] = {"dev_n": len(dev[0]) if dev else 0}
    try:
        classifier = load_classifier(folder, max_length)
    except Exception as exc:
        record["error"] = f"not a loadable classifier: {first_line(exc)}"
        log.warning("no serving forms for this version: %s", record["error"])
        return _write(folder, record)
    start = time.perf_counter()
    try:
        used = export_onnx(classifier, folder / FP32_FILE)
    except Exception as exc:
        record["fp32"] = {"error": first_line(exc)}
        log.warning("no %s for this version: %s", FP32_FILE, first_line(exc))
        return _write(folder, record)
    record["fp32"] = {
        "file": FP32_FILE,
        "exporter": used,
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    start = time.perf_counter()
    try:
        quantize_onnx(folder / FP32_FILE, folder / INT8_FILE)
        record["int8"] = {
            "file": INT8_FILE,
            "method": INT8_METHOD,
            "build_seconds": round(time.perf_counter() - start, 1),
        }
    except Exception as exc:
        (folder / INT8_FILE).unlink(missing_ok=True)
        record["int8"] = {"error": first_line(exc)}
        log.warning("no int8 form for this version: %s", first_line(exc))
    if not dev or not dev[0]:
        record["note"] = "no gold dev set: the forms were not scored"
        return _write(folder, record)
    for name in ("fp32", "int8"):
        form = record[name]
        if "error" in form:
            continue
        start = time.perf_counter()
        try:
            form["dev_macro_f1"] = round(dev_macro_f1(classifier, folder, form["file"], dev), 5)
            form["score_seconds"] = round(time.perf_counter() - start, 1)
        except Exception as exc:
            form["error"] = f"could not be scored: {first_line(exc)}"
    record["bf16"] = _score_bf16(folder, max_length, dev)
    f1_fp32 = record["fp32"].get("dev_macro_f1")
    for name in ("int8", "bf16"):
        f1 = record[name].get("dev_macro_f1")
        if f1_fp32 is not None and f1 is not None:
            record[f"{name}_drop_points"] = round(100 * (f1_fp32 - f1), 2)
    log.info(
        "serving forms: fp32 dev macro-F1 %s, int8 %s (drop %s points), bf16 %s (drop %s)",
        f1_fp32,
        record["int8"].get("dev_macro_f1"),
        record.get("int8_drop_points"),
        record["bf16"].get("dev_macro_f1", record["bf16"].get("unavailable")),
        record.get("bf16_drop_points"),
    )
    return _write(folder, record)


def _score_bf16(folder: Path, max_length: int, dev: tuple[list[str], list[str]]) -> dict[str, Any]:
    """The dev macro-F1 of the model in bf16 under PyTorch, where this CPU computes bf16:
    elsewhere torch emulates it, several times slower than fp32 (docs/benchmarks.md), and
    no API process on such a CPU would serve it."""
    from app.ml import training
    from app.ml.modeling import as_bf16, load_classifier
    from app.ml.onnx_runtime import first_line

    if not training.cpu_has_fast_bf16():
        return {"unavailable": f"not scored: the publishing CPU has none of {BF16_FLAGS}"}
    start = time.perf_counter()
    try:
        classifier = as_bf16(load_classifier(folder, max_length))
        f1 = training.evaluate(classifier, *dev)["macro_f1"]
    except Exception as exc:
        return {"error": f"could not be scored: {first_line(exc)}"}
    return {
        "dev_macro_f1": round(float(f1), 5),
        "score_seconds": round(time.perf_counter() - start, 1),
    }


def _write(folder: Path, record: dict[str, Any]) -> dict[str, Any]:
    (folder / FORMS_FILE).write_text(json.dumps(record, indent=2))
    return record


def read_forms(folder: Path) -> dict[str, Any] | None:
    """What publishing recorded of `folder`'s forms (None for a version published before
    forms were recorded, or without the file)."""
    path = folder / FORMS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_form(folder: Path, form: Form, max_length: int, threads: int | None) -> Classifier:
    """The version in `folder` as an API process serves it in `form`. ONNX forms raise
    OnnxUnavailable where the file is missing or ONNX Runtime cannot run it."""
    from app.ml.modeling import as_bf16, load_classifier, quantize_int8
    from app.ml.onnx_runtime import onnx_classifier

    classifier = load_classifier(folder, max_length)
    if form.onnx_file is not None:
        return onnx_classifier(classifier, folder, threads, form.onnx_file)
    builders = {
        Form.TORCH_FP32: lambda c: c,
        Form.TORCH_INT8: quantize_int8,
        Form.TORCH_BF16: as_bf16,
    }
    built: Classifier = builders[form](classifier)
    return built
