"""The served classifier run by ONNX Runtime instead of PyTorch (INFER_BACKEND=onnxruntime).

The model is exported once per version to `model.onnx` (and quantized to
`model.int8.onnx`: app/ml/serving_forms.py) when the version is published, in its folder
before the folder is renamed into place, then run by onnxruntime's CPU provider. The
result is a `Classifier` whose `model` is an ONNX Runtime session behind the call
signature the server uses (`model(**batch).logits`), so tokenizing, padding and
micro-batching stay exactly as they are. The logits match PyTorch's to rounding
(tests/bench/test_variants.py holds the tolerance); `make bench` measures the speed
(docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from app.ml.modeling import Classifier

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
Exporter = Literal["auto", "dynamo", "torchscript"]
EXAMPLE_TEXTS = [
    "delayed again",
    "the crew was friendly and the seats were fine, but the bags came late",
]


class OnnxUnavailable(RuntimeError):
    """ONNX export or ONNX Runtime cannot be used for this model here."""


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


class _LogitsOf(torch.nn.Module):
    """The classifier's forward with named tensor inputs and the logits tensor as output."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        logits: torch.Tensor = self.model(**kwargs).logits
        return logits


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence the exporters' expected chatter (tracer and deprecation warnings)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(classifier: Classifier, path: Path, exporter: Exporter = "auto") -> str:
    """Write `classifier`'s model as ONNX to `path`, with dynamic batch and sequence axes.

    "torchscript" is the tracing exporter (deprecated since torch 2.9 but several times
    faster to export here), "dynamo" torch.export's (needs `onnxscript`); "auto" tries
    them in that order. Returns the exporter used (docs/benchmarks.md has the times).
    """
    if classifier.model.device.type != "cpu":
        raise OnnxUnavailable("ONNX export here expects the model on the CPU")
    example = classifier.tokenizer(
        EXAMPLE_TEXTS,
        padding=True,
        truncation=True,
        max_length=classifier.max_length,
        return_tensors="pt",
    )
    names = [name for name in ONNX_INPUTS if name in example]
    if names[:2] != ["input_ids", "attention_mask"]:
        raise OnnxUnavailable(f"the tokenizer produces {sorted(example)}, not input_ids/mask")
    args = tuple(example[name] for name in names)
    module = _LogitsOf(classifier.model).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    for kind in ("torchscript", "dynamo") if exporter == "auto" else (exporter,):
        try:
            with torch.inference_mode(False), torch.no_grad(), _quiet_export():
                if kind == "dynamo":
                    try:
                        import onnxscript  # noqa: F401
                    except ImportError as error:
                        raise OnnxUnavailable("the dynamo exporter needs onnxscript") from error
                    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
                    torch.onnx.export(
                        module,
                        args,
                        str(path),
                        dynamo=True,
                        input_names=names,
                        output_names=["logits"],
                        dynamic_shapes={name: {0: batch, 1: seq} for name in names},
                        external_data=False,
                    )
                else:
                    axes = {name: {0: "batch", 1: "sequence"} for name in names}
                    torch.onnx.export(
                        module,
                        args,
                        str(path),
                        dynamo=False,
                        input_names=names,
                        output_names=["logits"],
                        dynamic_axes={**axes, "logits": {0: "batch"}},
                        opset_version=17,
                    )
            return kind
        except Exception as error:
            errors.append(f"{kind}: {first_line(error)}")
    raise OnnxUnavailable("ONNX export failed: " + "; ".join(errors))


def ort_session(path: Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session over `path` with `threads` intra-op threads."""
    try:
        import onnxruntime as ort
    except ImportError as error:
        raise OnnxUnavailable("onnxruntime is not installed (pip install onnxruntime)") from error
    if "CPUExecutionProvider" not in ort.get_available_providers():
        raise OnnxUnavailable("onnxruntime has no CPUExecutionProvider")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No busy-waiting between runs: measured, the same speed for one API process, and two
    # API processes (or one beside a training job) no longer burn each other's cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:
        raise OnnxUnavailable(f"onnxruntime cannot load {path}: {first_line(error)}") from error


@dataclass
class _Output:
    logits: torch.Tensor


class OrtModel:
    """An ONNX Runtime session that answers `model(**batch).logits` like the PyTorch model."""

    device = torch.device("cpu")

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]

    def __call__(self, **batch: torch.Tensor) -> _Output:
        feed = {name: batch[name].to(torch.int64).numpy() for name in self.input_names}
        (out,) = self.session.run(["logits"], feed)
        return _Output(torch.from_numpy(out))

    def eval(self) -> OrtModel:
        return self


def onnx_classifier(
    classifier: Classifier, folder: Path, threads: int | None = None, file: str = ONNX_FILE
) -> Classifier:
    """`classifier` served by ONNX Runtime from `file` (`model.onnx`, or the int8 form) of
    the folder its version was published in. A published folder is read-only: a version
    without the file (its export failed, or it was published under INFER_BACKEND=torch)
    raises OnnxUnavailable."""
    path = folder / file
    if not path.is_file():
        raise OnnxUnavailable(f"{folder.name} was published without {file}")
    model: Any = OrtModel(ort_session(path, threads))
    return replace(classifier, model=model)
