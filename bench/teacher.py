"""Part 8 of the benchmark: the stronger teacher served as the model, beside the model the
service serves (part 1): what an operator who prefers quality to speed pays per text.

The teacher's speed does not depend on its weights, so an untrained head over the
installed teacher encoder (all-mpnet-base-v2 after `make teacher`, or TEACHER_MODEL) is
measured, with its forms built as publishing builds them, every layout, as part 1 does.
`--quick` measures a tiny MPNet instead, to check the part runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from app.core.config import Settings
from app.ml.modeling import init_classifier, save_classifier
from app.ml.serving_forms import Form, build_forms
from app.ml.training import cpu_has_fast_bf16
from bench.context import Bench
from bench.forms import log
from bench.layouts import measure_layouts
from bench.tiny import build_tiny_mpnet


def installed_teacher(bench_settings: Settings) -> Path | None:
    """The teacher encoder to measure: the benchmark service's own (TEACHER_MODEL, or its
    separate DATA_DIR), else where `make teacher` installed it for the service."""
    places = [bench_settings.teacher_model_path, Settings().teacher_model_path]
    return next((p for p in places if (p / "config.json").is_file()), None)


def teacher(bench: Bench) -> dict[str, Any]:
    """Texts/s of the teacher's forms at the machine's best layout and batch."""
    if bench.quick:
        encoder = build_tiny_mpnet(bench.out / "tiny-mpnet")
    else:
        found = installed_teacher(bench.settings)
        if found is None:
            log("8. teacher: no teacher encoder installed (make teacher): skipped")
            where = Settings().teacher_model_path
            return {"unavailable": f"no teacher encoder in {where} (make teacher)"}
        encoder = found
    folder = bench.out / "teacher-model"
    labels = sorted({g.label for g in bench.gold})
    if not (folder / "model.onnx").is_file():
        log(f"8. teacher: {encoder.name} with a fresh head, its forms built")
        model, tokenizer = init_classifier(encoder, labels)
        folder.mkdir(parents=True, exist_ok=True)
        save_classifier(model, tokenizer, folder)
        build_forms(folder, bench.settings.max_length, None)
    forms = [Form.ONNX_FP32, Form.ONNX_INT8]
    if cpu_has_fast_bf16():
        forms.append(Form.TORCH_BF16)
    if bench.quick:  # the smoke test checks the part runs: one form, one batch
        forms = [Form.ONNX_INT8]
    sizes = [8] if bench.quick else [1, 8, 16, 32]
    cores = os.cpu_count() or 1
    by_form: dict[str, Any] = {}
    for form in forms:
        log(f"8. teacher: {form}, every layout")
        args = (bench.settings.max_length, bench.texts, cores, sizes, bench.seconds / 2)
        by_form[form.value] = measure_layouts(folder, form, *args)["best"]
    fastest = max(by_form, key=lambda f: by_form[f]["texts_per_s"])
    return {
        "encoder": str(encoder),
        "layers": _layers(folder),
        "forms": by_form,
        "fastest": fastest,
        "fastest_texts_per_s": by_form[fastest]["texts_per_s"],
    }


def _layers(folder: Any) -> int:
    import json

    return int(json.loads((folder / "config.json").read_text())["num_hidden_layers"])
