"""Loading a published version the way this API process should serve it.

Each candidate form (app/serving/form_choice.py) is loaded from the version's folder and
warmed up, its micro-batch bounds are measured (app/serving/batch_tuning.py) on texts like
those it will serve, and where there are several the faster serves. All of it runs off the
event loop, before the swap, while the version loaded before keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from app.core.config import Settings
from app.ml.modeling import Classifier, load_classifier
from app.ml.onnx_runtime import OnnxUnavailable
from app.ml.serving_forms import Form, load_form
from app.registry import version_dir
from app.serving.batch_bounds import BatchBounds, fixed_bounds
from app.serving.batch_tuning import bounds_for, model_shape, one_load_at_a_time, speed_at
from app.serving.form_choice import Candidate, ServedModel, candidate_forms, fastest

log = logging.getLogger(__name__)

# Texts like those this process will serve (the store's newest, else gold), read only when
# bounds are measured; given at wiring time so that serving itself never reads the store.
SampleTexts = Callable[[], Sequence[str]]


class VersionLoader:
    """`loader(version)`: the version's chosen form, warmed up, with its bounds."""

    def __init__(self, settings: Settings, sample_texts: SampleTexts) -> None:
        self.settings = settings
        self.sample_texts = sample_texts
        self.processes, self.threads = settings.api_layout

    def __call__(self, version: int) -> ServedModel:
        # Siblings on this machine load one after the other: each load takes a core for
        # seconds, and would skew the measurement of the bounds beside it.
        with one_load_at_a_time(self.settings.models_path):
            return self._load(version)

    def _load(self, version: int) -> ServedModel:
        folder = version_dir(self.settings, version)
        shape = model_shape(folder, self.settings.max_length)
        built = [self._build(version, folder, c) for c in candidate_forms(self.settings, folder)]
        served = [
            ServedModel(version, classifier, form, reason, self._measured(classifier, shape, form))
            for form, reason, classifier in built
        ]
        chosen = served[0] if len(served) == 1 else fastest([self._with_speed(s) for s in served])
        log.info("v%s: serving %s (%s)", version, chosen.form, chosen.form_reason)
        return chosen

    def _build(
        self, version: int, folder: Path, candidate: Candidate
    ) -> tuple[Form, str, Classifier]:
        """The candidate's form of the version, warmed up; PyTorch where ONNX Runtime
        cannot run it."""
        form, reason = candidate.form, candidate.reason
        try:
            classifier = load_form(folder, form, self.settings.max_length, self.threads)
        except OnnxUnavailable as exc:
            # The version itself is fine: serve it with PyTorch rather than refuse it.
            log.warning("v%s: ONNX Runtime unavailable (%s); serving it with PyTorch", version, exc)
            form, reason = Form.TORCH_FP32, f"ONNX Runtime unavailable: {exc}"
            classifier = load_classifier(folder, self.settings.max_length)
        # Warm up so the first real request does not pay for lazy initialisation.
        classifier.logits(["warm-up text"])
        return form, reason, classifier

    def _measured(self, classifier: Classifier, shape: str, form: Form) -> BatchBounds:
        try:
            return bounds_for(self.settings, classifier, self.sample_texts, shape=shape, form=form)
        except Exception as exc:  # a measurement that fails must not refuse a good version
            log.warning("%s: micro-batch bounds not measured (%s); using the defaults", form, exc)
            return fixed_bounds(self.settings)

    def _with_speed(self, served: ServedModel) -> ServedModel:
        """`served` with the texts/s of its form at its bounds, measured now where its
        bounds were set rather than measured (not cached: the settings can change)."""
        seconds = self.settings.infer_tune_seconds
        if served.bounds.texts_per_s is not None or seconds <= 0:
            return served
        bounds = served.bounds
        try:
            texts = self.sample_texts()
            speed = speed_at(served.classifier, texts, bounds, seconds / 3, self.processes)
        except Exception as exc:  # as for the bounds: a failed measurement refuses nothing
            log.warning("%s: speed not measured (%s)", served.form, exc)
            return served
        measured = {f"texts={bounds.max_texts}": round(speed, 1)}
        return replace(served, bounds=replace(bounds, measured=measured))
