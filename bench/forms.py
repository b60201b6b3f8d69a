"""Part 1 of the benchmark: the bare batched forward pass of every form of the served model
(fp32, int8 dynamic quantization, torch.compile, ONNX Runtime), in-process, with the test
macro-F1 of each form; and of a student with half its layers (a job's student_layers),
for its speed beside the full model in the same run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from app.ml.modeling import (
    Classifier,
    encoder_layers,
    keep_layers,
    load_classifier,
    quantize_int8,
)
from app.ml.serving_forms import INT8_FILE, Form


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def measure_ceiling(
    classifier: Classifier, texts: list[str], batch_sizes: list[int], seconds: float
) -> dict[int, dict[str, float]]:
    """Texts/s of tokenize + forward, in-process, per batch size."""
    out: dict[int, dict[str, float]] = {}
    for size in batch_sizes:
        classifier.logits(texts[:size])  # warm-up
        done, start, i = 0, time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            chunk = [texts[(i + k) % len(texts)] for k in range(size)]
            classifier.logits(chunk)
            done += size
            i += size
        elapsed = time.perf_counter() - start
        out[size] = {
            "texts_per_s": round(done / elapsed, 1),
            "ms_per_batch": round(1000 * elapsed * size / done, 2),
        }
    return out


def measure_forms(
    folder: Path,
    max_length: int,
    texts: list[str],
    test: list[tuple[str, str]],
    sizes: list[int],
    seconds: float,
    workdir: Path,
) -> dict[str, Any]:
    """For each form: texts/s per batch size, the best batch, batch-1 latency, test macro-F1
    and its one-off set-up time."""
    from app.ml.training import evaluate
    from bench import variants

    fp32 = load_classifier(folder, max_length)
    # The student a job with student_layers = half makes: the same blocks, half as many.
    # Cut here, not trained, so only its speed means anything; its quality is measured by
    # `make repro` (docs/ablation.md).
    student = load_classifier(folder, max_length)
    layers = len(encoder_layers(student.model))
    keep_layers(student.model, max(1, layers // 2))
    half = f"student {max(1, layers // 2)} of {layers} layers"
    builders: dict[str, Any] = {
        "fp32": lambda: fp32,
        "int8": lambda: quantize_int8(fp32),
        Form.TORCH_BF16.value: lambda: variants.bf16(fp32),
        "torch.compile": lambda: variants.compiled(fp32),
        "onnxruntime": lambda: variants.onnx_runtime(fp32, workdir),
        # The int8 form publishing built into the version's folder, as API processes serve it.
        Form.ONNX_INT8.value: lambda: variants.published_form(fp32, folder, INT8_FILE),
        f"{half}, fp32": lambda: student,
        f"{half}, onnxruntime": lambda: variants.onnx_runtime(student, workdir / "student"),
    }
    forms: dict[str, Any] = {}
    for name, build in builders.items():
        log(f"1. ceiling: {name}")
        try:
            model = build()
        except variants.VariantUnavailable as exc:
            forms[name] = {"unavailable": str(exc)}
            continue
        speed = measure_ceiling(model, texts, sizes, seconds)
        best = max(speed, key=lambda b: speed[b]["texts_per_s"])
        speed_only = name.startswith("student")
        f1 = (
            None
            if speed_only
            else evaluate(model, [t for t, _ in test], [label for _, label in test])["macro_f1"]
        )
        forms[name] = {
            "by_batch": speed,
            "best_batch": best,
            "best_texts_per_s": speed[best]["texts_per_s"],
            "batch1_ms": speed[1]["ms_per_batch"],
            "test_macro_f1": None if f1 is None else round(f1, 4),
            "setup_seconds": round(getattr(model, "setup_seconds", 0.0), 1),
        }
        del model
    return forms
