"""Which form of a version an API process serves, and why: the rules, apart from loading.

A version is published with its forms (app/ml/serving_forms.py: the ONNX export, its int8
quantization, each scored on the gold dev set, and bf16 scored where the publishing CPU
computes it). Here, from what publishing recorded, the settings and this CPU:

- the quality gates: int8 serves only within INFER_INT8_MAX_DROP points of fp32's dev
  macro-F1, bf16 only within INFER_BF16_MAX_DROP and only on a CPU that computes it;
- the candidates: one form, or the ONNX form the int8 gate chose and bf16 where its gate
  passed, to be measured against each other at load (app/serving/version_loader.py);
- the comparison: of candidates measured, the fastest at its own micro-batch bounds, or
  one nearly as fast with larger passes.

Nothing here loads a model or reads the store: each rule is a function of its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from app.core.config import Settings
from app.ml.modeling import Classifier
from app.ml.serving_forms import BF16_FLAGS, INT8_FILE, Form, FormPolicy, read_forms
from app.serving.batch_bounds import BatchBounds, default_bounds
from app.serving.batch_tuning import WITHIN


@dataclass(frozen=True)
class Candidate:
    """A form this version may be served in here, and why."""

    form: Form
    reason: str


@dataclass(frozen=True)
class ServedModel:
    """A version ready to serve: the classifier, which form of it runs and why, and the
    micro-batch bounds chosen for it."""

    version: int
    classifier: Classifier
    form: Form = Form.TORCH_FP32
    form_reason: str = ""
    bounds: BatchBounds = field(default_factory=default_bounds)
    # texts/s of each form measured against this one at load, where there were several.
    compared: dict[Form, float] = field(default_factory=dict)


def int8_gate(folder: Path, policy: FormPolicy, max_drop_points: float) -> Candidate:
    """The ONNX form to serve: int8 where it was built and (policy "gated") its dev
    macro-F1 is at most `max_drop_points` below fp32's; else fp32."""
    if policy == "never":
        return Candidate(Form.ONNX_FP32, "INFER_INT8=never")
    forms = read_forms(folder)
    if forms is None or not (folder / INT8_FILE).is_file():
        return Candidate(Form.ONNX_FP32, "published without an int8 form")
    if policy == "always":
        return Candidate(Form.ONNX_INT8, "INFER_INT8=always (not gated)")
    drop = forms.get("int8_drop_points")
    if drop is None:
        why = forms.get("note") or forms.get("int8", {}).get("error") or "int8 was not scored"
        return Candidate(Form.ONNX_FP32, f"{why}: int8 not served unscored")
    if drop > max_drop_points:
        return Candidate(
            Form.ONNX_FP32,
            f"int8 dev macro-F1 {drop:.2f} points below fp32 (limit {max_drop_points:g})",
        )
    return Candidate(
        Form.ONNX_INT8,
        f"int8 dev macro-F1 within {max_drop_points:g} points of fp32 ({drop:+.2f} drop)",
    )


def bf16_gate(folder: Path, policy: FormPolicy, max_drop_points: float) -> tuple[bool, str]:
    """Whether `Form.TORCH_BF16` of `folder` may be served on this CPU, and why: where the
    CPU computes bf16 and (policy "gated") publishing scored it at most `max_drop_points`
    of dev macro-F1 below fp32. Being allowed makes it a candidate; the API process serves
    it only if it is also the faster form here."""
    from app.ml import training

    if policy == "never":
        return False, "INFER_BF16=never"
    if not training.cpu_has_fast_bf16():
        return False, f"this CPU has none of {BF16_FLAGS}"
    if policy == "always":
        return True, "INFER_BF16=always (not gated)"
    forms = read_forms(folder) or {}
    drop = forms.get("bf16_drop_points")
    if drop is None:
        bf16 = forms.get("bf16") or {}
        why = bf16.get("unavailable") or bf16.get("error") or "bf16 was not scored"
        return False, f"{why}: bf16 not served unscored"
    if drop > max_drop_points:
        return False, f"bf16 dev macro-F1 {drop:.2f} points below fp32 (limit {max_drop_points:g})"
    return True, f"bf16 dev macro-F1 within {max_drop_points:g} points of fp32 ({drop:+.2f} drop)"


def candidate_forms(settings: Settings, folder: Path) -> list[Candidate]:
    """The forms the version in `folder` may be served in here, each with why: one, or the
    backend's form and bf16 (both within their quality gates, to be measured against each
    other). The backend's form comes first: it serves where nothing is measured."""
    s = settings
    if s.infer_backend == "torch-int8":
        return [Candidate(Form.TORCH_INT8, "INFER_BACKEND=torch-int8 (not gated)")]
    if s.infer_backend == "torch":
        forms = [Candidate(Form.TORCH_FP32, "INFER_BACKEND=torch")]
    else:
        forms = [int8_gate(folder, s.infer_int8, s.infer_int8_max_drop)]
    allowed, why = bf16_gate(folder, s.infer_bf16, s.infer_bf16_max_drop)
    if allowed and s.infer_bf16 == "always":
        return [Candidate(Form.TORCH_BF16, why)]
    if allowed:
        return [*forms, Candidate(Form.TORCH_BF16, why)]
    return [Candidate(c.form, f"{c.reason}; not bf16: {why}") for c in forms]


def fastest(served: list[ServedModel]) -> ServedModel:
    """Of forms that all passed their quality gates, the one that ran the most texts/s at
    its own bounds (`bounds.texts_per_s`), except that a form within WITHIN of the fastest
    with larger passes wins: as for the bounds, each pass costs the service more than the
    measurement at load sees (docs/benchmarks.md, "Why serving is built this way"). Where
    a form's speed was not measured (INFER_TUNE_SECONDS=0), the first serves."""
    speeds = {s.form: v for s in served if (v := s.bounds.texts_per_s) is not None}
    if len(speeds) < len(served):
        first, others = served[0], ", ".join(s.form for s in served[1:])
        why = f"{first.form_reason}; {others} not compared (the bounds were not measured)"
        return replace(first, form_reason=why)
    top = max(speeds.values())
    close = [s for s in served if speeds[s.form] >= (1 - WITHIN) * top]
    best = max(close, key=lambda s: (s.bounds.max_texts, speeds[s.form]))

    def shown(s: ServedModel) -> str:
        return f"{speeds[s.form]:.0f} texts/s at up to {s.bounds.max_texts} texts a pass"

    against = "; ".join(f"{s.form} {shown(s)}" for s in served if s is not best)
    why = f"{best.form_reason}; measured here {shown(best)}, against {against}"
    if speeds[best.form] < top:
        why += f" (within {WITHIN:.0%} of the fastest, with larger passes)"
    return replace(best, form_reason=why, compared=speeds)
