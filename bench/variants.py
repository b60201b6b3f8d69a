"""Faster forms of the served classifier, for the benchmark to measure against eager PyTorch.

Each constructor takes a `Classifier` (app.ml.modeling) and returns an object with the same
`labels`, `max_length`, `tokenizer`, `logits(texts)` and `predict(texts)` contract (and
`forward(batch)`: logits of an already padded batch of token tensors), plus `setup_seconds`:
the one-off cost (compilation, or export and session creation) that the benchmark reports
apart from steady-state speed. A backend that cannot run on this machine
raises `VariantUnavailable(reason)`, for the benchmark to record instead of crashing.

- `compiled`: the same model under `torch.compile` (inductor, CPU), dynamic shapes, warmed up
  on batch size 1 and on larger batches of several lengths before `setup_seconds` is taken;
- `onnx_runtime`: the model exported to ONNX with dynamic batch and sequence axes, run by
  onnxruntime's CPUExecutionProvider with torch's thread count.

The ONNX packages are the optional dependency group `bench` (part of `dev`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from app.ml.modeling import Classifier
from app.ml.onnx_runtime import (
    Exporter,
    OnnxUnavailable,
    OrtModel,
    export_onnx,
    first_line,
    ort_session,
)

# Texts of different lengths: warm-up and example inputs (batch 1 is its own graph under
# torch.compile, whose dynamic shapes specialise sizes 0 and 1).
WARMUP_BATCHES: tuple[tuple[str, ...], ...] = (
    ("great flight, thanks",),
    ("delayed again", "the crew was friendly and the seats were fine, but the bags came late"),
    ("ok", "lost my bag", "@united why was my flight to Denver cancelled without any notice?"),
)


class VariantUnavailable(RuntimeError):
    """This backend cannot be used here; `reason` says why (for the benchmark's report)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class FastClassifier:
    """What every variant offers: the served `Classifier`'s inference contract."""

    name = "variant"

    def __init__(self, source: Classifier, setup_seconds: float = 0.0):
        self.tokenizer = source.tokenizer
        self.labels = list(source.labels)
        self.max_length = source.max_length
        self.setup_seconds = setup_seconds

    def logits(self, texts: list[str]) -> torch.Tensor:
        """float32 logits on the CPU, one row per text, padded to this batch's longest text."""
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return self.forward(dict(encoded))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """float32 CPU logits of a padded batch of token tensors (the tokenizer's names)."""
        raise NotImplementedError

    # The same batching over `logits` as the served classifier.
    predict = Classifier.predict


# --- torch.compile ---------------------------------------------------------------------------


def _compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class CompiledClassifier(FastClassifier):
    """The served model under `torch.compile(dynamic=True)`; `setup_seconds` is the warm-up,
    `warmup_graphs` the graphs it compiled, `graphs_since_warmup()` any compiled after it
    (recompiles in steady state, which should stay 0)."""

    name = "torch.compile"

    def __init__(self, source: Classifier, compiled_model: Any):
        super().__init__(source)
        self.model = compiled_model
        self.device = source.model.device
        self.warmup_graphs = 0
        self._graphs_after_warmup = _compiled_graphs()

    @torch.inference_mode()
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return self.model(**batch).logits.float().cpu()

    def warm_up(self, batches: Sequence[Sequence[str]] = WARMUP_BATCHES) -> float:
        """Run `batches` (compiling what they need); returns and records the seconds taken."""
        graphs = _compiled_graphs()
        start = time.perf_counter()
        for texts in batches:
            self.logits(list(texts))
        self.setup_seconds = time.perf_counter() - start
        self._graphs_after_warmup = _compiled_graphs()
        self.warmup_graphs = self._graphs_after_warmup - graphs
        return self.setup_seconds

    def graphs_since_warmup(self) -> int:
        """Graphs compiled (by any compiled code in this process) since the warm-up ended."""
        return _compiled_graphs() - self._graphs_after_warmup


def compiled(
    classifier: Classifier,
    *,
    mode: str | None = None,
    options: dict[str, Any] | None = None,
    warm_up: bool = True,
) -> CompiledClassifier:
    """`classifier` under torch.compile (inductor) with dynamic batch and sequence sizes.

    With `warm_up` (the default) the compilation happens here, on `WARMUP_BATCHES`, and
    `setup_seconds` is its wall time; otherwise call `.warm_up(...)` before timing.
    The source classifier's model is shared, not copied or changed.
    """
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        raise VariantUnavailable("torch.compile is not supported on this Python/platform")
    if classifier.model.device.type == "cpu":
        from torch._inductor import cpp_builder

        try:
            cpp_builder.get_cpp_compiler()
        except Exception as error:
            raise VariantUnavailable(
                f"torch.compile's CPU backend needs a C++ compiler: {first_line(error)}"
            ) from error
    kwargs: dict[str, Any] = {"dynamic": True}
    if mode is not None:
        kwargs["mode"] = mode
    if options is not None:
        kwargs["options"] = options
    variant = CompiledClassifier(classifier, torch.compile(classifier.model, **kwargs))
    if warm_up:
        try:
            variant.warm_up()
        except Exception as error:
            raise VariantUnavailable(f"torch.compile failed: {first_line(error)}") from error
    return variant


# --- ONNX Runtime ----------------------------------------------------------------------------


class OnnxRuntimeClassifier(FastClassifier):
    """An onnxruntime session over the exported model; `exporter` says which exporter made it,
    `export_seconds` and `session_seconds` split `setup_seconds`."""

    name = "onnxruntime"

    def __init__(self, source: Classifier, session: Any, exporter: str, export_s: float):
        super().__init__(source)
        # The same session wrapper INFER_BACKEND=onnxruntime serves with.
        self.model = OrtModel(session)
        self.exporter = exporter
        self.export_seconds = export_s

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**batch).logits.float()


def onnx_runtime(
    classifier: Classifier,
    workdir: Path,
    *,
    exporter: Exporter = "auto",
    threads: int | None = None,
) -> OnnxRuntimeClassifier:
    """`classifier` exported to `workdir/model.onnx` and run by onnxruntime on the CPU with
    `threads` intra-op threads (torch's count by default), as INFER_BACKEND=onnxruntime
    serves it (app/ml/onnx_runtime.py). `setup_seconds` is export plus session creation."""
    start = time.perf_counter()
    path = workdir / "model.onnx"
    try:
        used = export_onnx(classifier, path, exporter)
        export_s = time.perf_counter() - start
        session = ort_session(path, threads)
    except OnnxUnavailable as error:
        raise VariantUnavailable(str(error)) from error
    variant = OnnxRuntimeClassifier(classifier, session, used, export_s)
    variant.logits(list(WARMUP_BATCHES[0]))  # the first run allocates; keep it out of timings
    variant.setup_seconds = time.perf_counter() - start
    return variant


# --- bf16 and the published forms --------------------------------------------------------------


def bf16(classifier: Classifier) -> Classifier:
    """A copy of `classifier` in bfloat16 (app/ml/modeling.as_bf16, the form an API
    process serves as `Form.TORCH_BF16`): on a CPU with avx512_bf16 or AMX, oneDNN runs its
    matrix products in bf16."""
    import copy

    from app.ml.modeling import as_bf16
    from app.ml.training import cpu_has_fast_bf16

    # Elsewhere torch emulates bf16, many times slower than fp32: the figure would only
    # measure the emulation.
    if not cpu_has_fast_bf16():
        raise VariantUnavailable("this CPU has none of avx512_bf16, amx_bf16")
    variant = as_bf16(replace(classifier, model=copy.deepcopy(classifier.model)))
    variant.logits(list(WARMUP_BATCHES[0]))
    return variant


def published_form(classifier: Classifier, folder: Path, file: str) -> Classifier:
    """The ONNX form `file` that publishing wrote into a version's folder, run as API
    processes run it (app/ml/onnx_runtime.onnx_classifier)."""
    from app.ml.onnx_runtime import onnx_classifier

    try:
        return onnx_classifier(classifier, folder, None, file)
    except OnnxUnavailable as error:
        raise VariantUnavailable(str(error)) from error
