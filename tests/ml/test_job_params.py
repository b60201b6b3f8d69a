"""One declaration per job parameter (app/ml/job_params.py): bodies in every shape it took
read the same, and nothing else that trains declares a default of its own."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel, ValidationError

from app.ml import training
from app.ml.job_params import FLAT_NAMES, JobParams, assignment, merged, sections
from app.ml.joint import JointModel
from app.ml.method import pretrain_on_predictions, student
from app.ml.training import fine_tune
from tests.conftest import LABELS, synthetic_texts

# Every name a flat body could use before the parameters had sections: each must still be
# read, into the same place.
FLAT_BEFORE_SECTIONS = {
    "start_from": "pretrain.start_from",
    "mlm_weight": "pretrain.mlm_weight",
    "task_weight": "pretrain.task_weight",
    "label_mode": "pretrain.label_mode",
    "task_input": "pretrain.task_input",
    "temperature": "pretrain.temperature",
    "mlm_probability": "pretrain.mlm_probability",
    "min_confidence": "pool.min_confidence",
    "max_confidence": "pool.max_confidence",
    "max_pool_texts": "pool.max_texts",
    "pool_class_cap": "pool.class_cap",
    "top_k_share": "pool.top_k_share",
    "student_layers": "student_layers",
    "token_deletion": "pretrain.token_deletion",
    "mlm_warmup_steps": "pretrain.mlm_warmup_steps",
    "pretrain_epochs": "pretrain.epochs",
    "pretrain_max_steps": "pretrain.max_steps",
    "pretrain_step_budget": "pretrain.step_budget",
    "pretrain_learning_rate": "pretrain.learning_rate",
    "finetune_epochs": "finetune.epochs",
    "finetune_max_steps": "finetune.max_steps",
    "finetune_min_steps": "finetune.min_steps",  # new since: every field has a flat name
    "finetune_learning_rate": "finetune.learning_rate",
    "finetune_eval_every": "finetune.eval_every",
    "finetune_patience": "finetune.patience",
    "batch_size": "batch_size",
    "max_length": "max_length",
    "truncation": "truncation",
    "seed": "seed",
    "precision": "precision",
    "promotion_rule": "promotion.rule",
    "promotion_margin": "promotion.margin",
    "promotion_tolerance": "promotion.tolerance",
    "promotion_confidence": "promotion.confidence",
    "promotion_min_gain": "promotion.min_gain",
    "promotion_power": "promotion.power",
    "promotion_review_hours": "promotion.review_hours",
    "promotion_looks": "promotion.looks",
    "promotion_look_spacing": "promotion.look_spacing",
    "promotion_early_level": "promotion.early_level",
    "teacher_source": "teacher.source",
    "teacher_version": "teacher.version",
    "teacher_finetune_steps": "teacher.finetune_steps",
    "teacher_learning_rate": "teacher.learning_rate",
    "teacher_refresh_growth": "teacher.refresh_growth",
    "teacher_refresh_steps": "teacher.refresh_steps",
    "teacher_pool_passes": "teacher.pool_passes",  # new since: every field has a flat name
}
# A value for each, none of them its default.
FLAT_BODY = {
    "start_from": "active",
    "mlm_weight": 0.5,
    "task_weight": 2.0,
    "label_mode": "hard",
    "task_input": "masked",
    "temperature": 2.0,
    "mlm_probability": 0.2,
    "min_confidence": 0.2,
    "max_confidence": 0.9,
    "max_pool_texts": 500,
    "pool_class_cap": 0.5,
    "top_k_share": 0.5,
    "student_layers": 3,
    "token_deletion": 0.1,
    "mlm_warmup_steps": 10,
    "pretrain_epochs": 2.0,
    "pretrain_max_steps": 7,
    "pretrain_step_budget": 100,
    "pretrain_learning_rate": 1e-4,
    "finetune_epochs": 3.0,
    "finetune_max_steps": 9,
    "finetune_min_steps": 11,
    "finetune_learning_rate": 2e-4,
    "finetune_eval_every": 10,
    "finetune_patience": 2,
    "batch_size": 8,
    "max_length": 64,
    "truncation": "head_tail",
    "seed": 7,
    "precision": "fp32",
    "promotion_rule": "faster_no_worse",
    "promotion_margin": -0.01,
    "promotion_tolerance": 0.02,
    "promotion_confidence": 0.9,
    "promotion_min_gain": 0.02,
    "promotion_power": 0.9,
    "promotion_review_hours": 0.0,
    "promotion_looks": 2,
    "promotion_look_spacing": "doubling",
    "promotion_early_level": 0.001,
    "teacher_source": "serving",
    "teacher_version": 7,
    "teacher_finetune_steps": 40,
    "teacher_learning_rate": 3e-5,
    "teacher_refresh_growth": 0.5,
    "teacher_refresh_steps": 12,
    "teacher_pool_passes": 2.0,
}


def _at(params: JobParams, dotted: str) -> object:
    value: object = params
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def test_every_flat_name_of_before_still_reads_into_its_place():
    top_level = set(JobParams.model_fields) - set(sections())
    # One flat name per section field, none shared, none a top-level name.
    assert len(FLAT_NAMES) == sum(len(kind.model_fields) for kind in sections().values())
    assert not set(FLAT_NAMES) & set(JobParams.model_fields)
    assert set(FLAT_NAMES) | top_level == set(FLAT_BEFORE_SECTIONS)
    assert set(FLAT_BODY) == set(FLAT_BEFORE_SECTIONS)
    params = JobParams.model_validate(FLAT_BODY)
    for flat, place in FLAT_BEFORE_SECTIONS.items():
        assert _at(params, place) == FLAT_BODY[flat], flat
    defaults = JobParams()
    for flat, place in FLAT_BEFORE_SECTIONS.items():
        assert _at(defaults, place) != FLAT_BODY[flat], (
            f"{flat}: pick a value that is not its default"
        )


def test_flat_dotted_and_nested_bodies_read_the_same():
    flat = JobParams.model_validate(FLAT_BODY)
    dotted = JobParams.model_validate({FLAT_BEFORE_SECTIONS[k]: v for k, v in FLAT_BODY.items()})
    nested = JobParams.model_validate(flat.model_dump())
    assert flat == dotted == nested
    # Kept as stored: a job stored flat and one stored nested give the same parameters.
    assert JobParams.model_validate(nested.model_dump(mode="json")) == flat
    assert JobParams.model_validate({}) == JobParams()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"learning_rate": 1}, "learning_rate"),  # in two sections: no flat name
        ({"pretrain": {"epochs": 2}, "pretrain_epochs": 3}, "given twice"),
        ({"pretrain.epochs": 2, "pretrain_epochs": 3}, "given twice"),
        ({"pretrain": 3, "mlm_weight": 1}, "pretrain is not an object"),
        ({"pretrain.nothing": 1}, "pretrain.nothing"),
        ({"finetune": {"finetune_epochs": 2}}, "finetune_epochs"),  # flat names are top-level
        ({"mlm_weight": 0, "task_weight": 0}, "nothing to pre-train"),
        ({"min_confidence": 0.9, "max_confidence": 0.5}, "min_confidence is above"),
    ],
)
def test_bad_bodies_are_refused_with_the_name(body, fragment):
    with pytest.raises(ValidationError, match=fragment.replace(".", r"\.")):
        JobParams.model_validate(body)


def test_layers_merge_section_by_section():
    layers = merged(
        {"finetune": {"epochs": 5.0, "patience": 1}},
        {"finetune.eval_every": 5},
        {"finetune_epochs": 2.0, "seed": 3},
    )
    assert layers == {"finetune": {"epochs": 2.0, "patience": 1, "eval_every": 5}, "seed": 3}
    params = JobParams().updated(layers)
    assert (params.finetune.epochs, params.finetune.patience, params.finetune.eval_every) == (
        2.0,
        1,
        5,
    )
    assert params.finetune.learning_rate == JobParams().finetune.learning_rate
    assert assignment("pretrain.label_mode=hard") == ("pretrain.label_mode", "hard")
    assert assignment("pretrain_epochs=2") == ("pretrain_epochs", 2)
    with pytest.raises(ValueError, match="NAME=VALUE"):
        assignment("pretrain_epochs")


# Every module a job's parameters travel through on their way to a trained, judged model.
TRAINING_MODULES = [
    "app.ml.training",
    "app.ml.pretraining",
    "app.ml.method",
    "app.ml.joint",
    "app.ml.pool",
    "app.ml.promotion",
    "workers.pipeline",
    "workers.retrain",
    "workers.bootstrap",
]


def _knob_names() -> set[str]:
    names = set(JobParams.model_fields) | set(FLAT_NAMES)
    for kind in sections().values():
        names |= set(kind.model_fields)
    return names - set(sections())


def _defaulted_fields(cls: type) -> set[str]:
    if dataclasses.is_dataclass(cls):
        return {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        }
    if issubclass(cls, BaseModel):
        return {n for n, f in cls.model_fields.items() if not f.is_required()}
    return set()


def test_no_loop_config_or_function_declares_a_job_parameter_default_of_its_own():
    """The loop configs that held a second set of defaults are gone; a class or function
    that grows a field or argument named like a job parameter, with a default, fails here."""
    knobs = _knob_names()
    assert not hasattr(training, "LoopConfig") and not hasattr(training, "PretrainConfig")
    found = []
    for name in TRAINING_MODULES:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if getattr(value, "__module__", None) != name:
                continue  # imported, checked where it is declared
            if inspect.isclass(value):
                found += [f"{name}.{attr}.{f}" for f in _defaulted_fields(value) & knobs]
                members = [m for m in vars(value).values() if inspect.isfunction(m)]
            else:
                members = [value] if inspect.isfunction(value) else []
            for function in members:
                for arg in inspect.signature(function).parameters.values():
                    if arg.default is not inspect.Parameter.empty and arg.name in knobs:
                        found.append(f"{name}.{function.__qualname__}({arg.name}=...)")
    assert found == [], f"declare these once, in app/ml/job_params.py: {found}"


def test_the_service_recipe_is_the_default():
    """The five defaults that once disagreed between JobParams and the loop configs."""
    params = JobParams()
    assert params.pretrain.mlm_weight == 0.0
    assert params.pretrain.label_mode == "soft"
    assert params.pretrain.task_input == "clean"
    assert params.finetune.eval_every == 40
    assert params.finetune.patience == 5


def test_the_loops_run_the_default_job_as_declared(tiny_base: Path, monkeypatch):
    """With a default JobParams the loops run the service's recipe: soft labels on clean
    text without an MLM head, then fine-tuning that scores dev every 40 steps."""
    seen: list[dict] = []
    forward = JointModel.forward

    def spy(self, *args, **kwargs):
        seen.append(kwargs)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(JointModel, "forward", spy)
    # Only the lengths are set: a few steps at the tiny model's length.
    params = JobParams().updated({"pretrain.max_steps": 2, "finetune.max_steps": 80})
    params = params.at_length(32)
    rows = synthetic_texts(96, seed=2)
    texts, labels = [t for t, _ in rows], [label for _, label in rows]
    teacher = [[2.0 if LABELS[i] == label else 0.0 for i in range(3)] for label in labels]
    model, tokenizer, history = pretrain_on_predictions(
        tiny_base, LABELS, texts, teacher, params, lambda _f, _l: None
    )
    assert len(seen) == 2
    for call in seen:
        assert call["objective"] == params.pretrain  # the job's own section, whole
        assert call["hard_labels"] is None and call["teacher_logits"] is not None  # soft
        assert call["clean_input_ids"] is None  # no MLM: the one pass reads the clean text
        assert bool((call["mlm_labels"] == -100).all())  # nothing masked
    assert history.extra["mlm_loss"] == [0.0] * len(history.loss)

    torch.manual_seed(0)
    model, tokenizer = student(tiny_base, LABELS, params)
    dev = (texts[:30], labels[:30])
    tuned = fine_tune(model, tokenizer, texts, labels, params, dev=dev)
    selection = tuned.as_dict()["selection"]
    assert isinstance(selection, dict) and selection["steps"][:2] == [0, 40]
