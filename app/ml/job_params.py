# Long: every job parameter is declared here, once, with its default, bounds and meaning.
"""Parameters of a retraining job: what `POST /jobs` accepts, all optional. Each one is
declared here once, with its default, its bounds and its meaning; the training loops
(app/ml/training.py, app/ml/pretraining.py), the pool policy (app/ml/pool.py) and the
promotion gate (app/ml/promotion.py) read these objects themselves, so there is no second
set of defaults to keep in step.

They come in sections, one per stage of a job (`pool`, `pretrain`, `finetune`,
`promotion`, `teacher`), beside the ones both training stages share (`batch_size`, `max_length`,
`truncation`, `seed`, `precision`, `student_layers`). A body may name a parameter nested
(`{"pretrain": {"epochs": 2}}`), dotted (`{"pretrain.epochs": 2}`) or by its flat name
(`{"pretrain_epochs": 2}`): the flat names are those of the bodies written before the
sections existed, and stay valid (`flat_name`).

The defaults are the `kd` row of `make repro` (docs/ablation.md), the paper's final
method, which beat its compute-matched gold-only control on test in every seed. The
student starts from the base encoder and learns the serving model's logits (KL, soft
labels) on the clean texts of the pool (the newest texts that the step budget covers:
all of the demo data's), with no masked-LM loss; then it is fine-tuned on gold, keeping
its best dev checkpoint. bf16 where the CPU computes it natively.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


def flat(name: str) -> dict[str, Any]:
    """A field's flat name where it is not its section's prefix + its own name."""
    return {"flat_name": name}


class Section(BaseModel):
    """One stage's parameters. A field's flat name is `flat_prefix` + its name, unless the
    field declares another with `json_schema_extra=flat(...)`."""

    model_config = ConfigDict(extra="forbid")
    flat_prefix: ClassVar[str] = ""


class PoolParams(Section):
    """Which stored pseudo-labels the student learns from (app/ml/pool.py)."""

    min_confidence: float | None = Field(
        None, ge=0.0, le=1.0, description="Drop pseudo-labels below this confidence."
    )
    max_confidence: float | None = Field(
        None, ge=0.0, le=1.0, description="Drop pseudo-labels above this confidence."
    )
    max_texts: int = Field(
        0,
        ge=0,
        description="Use at most this many of the newest pseudo-labeled texts (0: as many as "
        "the pre-training steps cover: pretrain.step_budget x batch_size / pretrain.epochs).",
        json_schema_extra=flat("max_pool_texts"),
    )
    class_cap: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="No predicted class takes more than this share of the pool's limit, so a "
        "majority class does not swamp it (0: no cap).",
        json_schema_extra=flat("pool_class_cap"),
    )
    top_k_share: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Class-balanced top-K: keep the K most confident pseudo-labels of each "
        "predicted class, K = this share of the pool / the number of classes (0: every one).",
    )

    @model_validator(mode="after")
    def _something_left(self) -> PoolParams:
        if (
            self.min_confidence is not None
            and self.max_confidence is not None
            and self.min_confidence > self.max_confidence
        ):
            raise ValueError("min_confidence is above max_confidence: no pseudo-label is left")
        return self


class PretrainParams(Section):
    """Step 3 of the method: the student learns the teacher's predictions on the pool
    (app/ml/pretraining.py)."""

    start_from: Literal["base", "active"] = Field(
        "base",
        description="Encoder that pre-training starts from: the base encoder or the active model.",
    )
    mlm_weight: float = Field(
        0.0, ge=0.0, le=100.0, description="Weight of the masked-LM loss (0: none)."
    )
    task_weight: float = Field(
        1.0,
        ge=0.0,
        le=100.0,
        description="Weight of the task loss on the pseudo-labels (0: masked-LM only).",
    )
    label_mode: Literal["hard", "soft"] = Field(
        "soft",
        description="hard: cross-entropy to the stored label; soft: KL to the stored logits.",
    )
    task_input: Literal["masked", "clean"] = Field(
        "clean",
        description="Task loss on the masked input (one pass) or on the clean text (two passes).",
    )
    temperature: float = Field(1.0, gt=0.0, le=20.0, description="Softmax temperature, soft mode.")
    mlm_probability: float = Field(0.15, gt=0.0, lt=1.0, description="Share of tokens masked.")
    token_deletion: float = Field(
        0.0,
        ge=0.0,
        le=0.5,
        description="Noise on the student's input in pre-training: share of tokens dropped "
        "(the teacher's logits were computed on the clean text).",
    )
    mlm_warmup_steps: int = Field(
        0,
        ge=0,
        description="With MLM: steps that train the new MLM head alone before the joint loss.",
    )
    epochs: float = Field(
        1.0,
        gt=0.0,
        le=100.0,
        description="Epochs over the pool.",
        json_schema_extra=flat("pretrain_epochs"),
    )
    max_steps: int = Field(
        0,
        ge=0,
        description="Exact pre-training steps; overrides epochs (0: use epochs).",
        json_schema_extra=flat("pretrain_max_steps"),
    )
    step_budget: int = Field(
        400,
        ge=0,
        description="At most this many pre-training steps however large the store grows: the "
        "pool is the newest texts they cover (0: no bound, every stored text).",
        json_schema_extra=flat("pretrain_step_budget"),
    )
    learning_rate: float = Field(
        5e-5,
        gt=0.0,
        le=1.0,
        description="AdamW learning rate of pre-training (linear warm-up, decay).",
        json_schema_extra=flat("pretrain_learning_rate"),
    )

    @model_validator(mode="after")
    def _something_to_learn(self) -> PretrainParams:
        if self.mlm_weight == 0.0 and self.task_weight == 0.0:
            raise ValueError("mlm_weight and task_weight cannot both be 0: nothing to pre-train")
        return self


class FinetuneParams(Section):
    """Step 4 of the method: fine-tuning on the gold train split, keeping the weights with
    the best dev macro-F1 (app/ml/training.py)."""

    flat_prefix: ClassVar[str] = "finetune_"

    epochs: float = Field(1.0, gt=0.0, le=100.0, description="Epochs over gold train.")
    max_steps: int = Field(
        0, ge=0, description="Exact fine-tuning steps; overrides epochs (0: use epochs)."
    )
    min_steps: int = Field(
        100,
        ge=0,
        description="At least this many fine-tuning steps when epochs set the length: a "
        "few hundred labels are a handful of steps an epoch, too few to learn more than the "
        "commonest class (dev still picks the checkpoint; 0: no floor).",
    )
    learning_rate: float = Field(
        5e-5,
        gt=0.0,
        le=1.0,
        description="AdamW learning rate of fine-tuning (linear warm-up, decay).",
    )
    eval_every: int = Field(
        40,
        ge=0,
        description="Score gold dev every this many fine-tuning steps and keep the best "
        "weights (0: keep the last). With few labels the best step is hard to guess, so it "
        "is measured on dev rather than set.",
    )
    patience: int = Field(
        5,
        ge=0,
        description="Stop fine-tuning after this many dev scorings without a gain (0: never).",
    )


class PromotionParams(Section):
    """Whether the candidate replaces the champion: an exact test on the texts where the two
    answer differently, among the gate split's gold texts and the labeled disagreements
    of recent traffic (app/ml/promotion.py, workers/gate.py)."""

    flat_prefix: ClassVar[str] = "promotion_"

    rule: Literal["better", "faster_no_worse"] = Field(
        "better",
        description="better: publish a candidate shown better than promotion.margin; "
        "faster_no_worse: a candidate cheaper to serve (FASTER_COST of the champion's "
        "compute per token at most, app/ml/promotion.py) need only be shown to lose at "
        "most promotion.tolerance.",
    )
    margin: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="Accuracy gain over the texts judged that the candidate must be shown to "
        "exceed (at promotion.confidence); default: the PROMOTION_MARGIN setting.",
    )
    tolerance: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="faster_no_worse: the accuracy a faster candidate may be shown to lose "
        "at most.",
    )
    confidence: float = Field(
        0.95,
        ge=0.5,
        lt=1.0,
        description="1 - the chance of publishing a candidate no better than the margin, over "
        "all the looks together.",
    )
    min_gain: float = Field(
        0.01,
        gt=0.0,
        le=1.0,
        description="The smallest accuracy gain above the margin worth publishing: the number "
        "of reviews asked for is planned to show it with promotion.power.",
    )
    power: float = Field(
        0.8,
        ge=0.5,
        lt=1.0,
        description="The chance of publishing a candidate better by the margin plus "
        "promotion.min_gain that the review plan aims at.",
    )
    review_hours: float = Field(
        48.0,
        ge=0.0,
        le=24.0 * 90,
        description="How long a candidate may wait for reviews of its disagreements with the "
        "champion (status pending_review) before it is decided on what there is; a "
        "candidate whose queue is labeled out undecided is shown new traffic meanwhile (0: "
        "decide at the end of the job on the gate split alone).",
    )
    looks: int = Field(
        4,
        ge=1,
        le=20,
        description="Most evaluations of the test per candidate, each at (1 - confidence) / "
        "looks: the first at the end of the job, the others as the reviews reach equal "
        "shares of the planned count (1: one, once they all are in); the last, at the "
        "planned count or at the deadline (or when the disagreements run out, where no new "
        "traffic is scored), at what the earlier ones left.",
    )
    look_spacing: Literal["equal", "doubling"] = Field(
        "equal",
        description="Where the looks after the first come: `equal` shares of the planned "
        "count, or `doubling` counts that end at it (with 8 looks: 1/64, 1/32, ... 1/2 and "
        "all of it), so that a candidate far better than planned is published after a few "
        "dozen reviews instead of a few hundred; each look is still at (1 - confidence) / "
        "looks.",
    )
    early_level: float = Field(
        0.0,
        ge=0.0,
        lt=0.5,
        description="The level of every look but the last, at most (1 - confidence) / looks "
        "(0: that). A small one lets a candidate shown far better publish early "
        "while the last look keeps nearly all of 1 - confidence, and the review plan is "
        "sized for that last look (Haybittle-Peto).",
    )


class TeacherParams(Section):
    """Who teaches the student: the serving model (the predictions stored with each text)
    or a stronger teacher, a bigger encoder fine-tuned once on gold that scores the pool
    itself (workers/teacher.py)."""

    flat_prefix: ClassVar[str] = "teacher_"

    source: Literal["auto", "serving", "stronger"] = Field(
        "auto",
        description="auto: a stronger teacher where one is installed (a teacher version, or "
        "the TEACHER_MODEL encoder to fine-tune one from), else the serving model; serving: "
        "the serving model's stored predictions; stronger: a stronger teacher, or the job "
        "fails saying what is missing.",
    )
    version: int | None = Field(
        None,
        ge=1,
        description="The teacher version to learn from (default: the newest with the serving "
        "label set; where there is none, the job fine-tunes one first).",
    )
    finetune_steps: int = Field(
        160,
        ge=1,
        description="Fine-tuning steps of a new teacher on gold train, keeping its best dev "
        "checkpoint (finetune.eval_every, finetune.patience).",
    )
    learning_rate: float = Field(
        5e-5,
        gt=0.0,
        le=1.0,
        description="AdamW learning rate of a new teacher's fine-tuning.",
    )
    refresh_growth: float = Field(
        0.2,
        ge=0.0,
        description="Fine-tune a new teacher once gold train has grown by this share since "
        "the newest one was trained (0: keep the newest).",
    )
    refresh_steps: int = Field(
        48,
        ge=0,
        description="A new teacher made because gold grew starts from the newest teacher "
        "version and fine-tunes this many steps on all of gold train, keeping its best dev "
        "checkpoint, the weights it started from included (0: from the encoder again, for "
        "teacher.finetune_steps).",
    )
    pool_passes: float = Field(
        3.0,
        ge=1.0,
        le=20.0,
        description="Where a stronger teacher teaches, its student's pre-training runs this "
        "many times the passes over the pool, and the step budget, that pretrain.* set "
        "(pretrain.max_steps, where set, is kept exact): a student catching up with a "
        "bigger model needs more steps than one matching the serving model (docs/teacher.md).",
    )


class JobParams(BaseModel):
    """A job's parameters: the shared ones, then one section per stage."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(32, ge=1, le=1024, description="Texts per training step.")
    max_length: int | None = Field(
        None,
        ge=8,
        le=512,
        description="Tokens per text in training (default: the MAX_LENGTH setting, at which "
        "the candidate is evaluated and served).",
    )
    truncation: Literal["head", "head_tail"] = Field(
        "head",
        description="A longer text keeps its first tokens, or its first quarter and its end "
        "(head_tail, for long documents); the served model cuts texts the same way.",
    )
    seed: int = Field(13, ge=0, description="Seed of shuffling, masking and initialisation.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Training arithmetic: bf16 autocast (faster where the CPU has native bf16, "
        "docs/benchmarks.md; weights and optimizer state stay fp32), fp32, or auto (bf16 "
        "where it is fast).",
    )
    student_layers: int = Field(
        0,
        ge=0,
        le=48,
        description="Encoder layers of the candidate, kept evenly spaced from the start model "
        "(6 -> 3 keeps 0, 2, 4); 0: all of them. Fewer layers serve faster.",
    )
    pool: PoolParams = Field(default_factory=PoolParams, description=PoolParams.__doc__)
    pretrain: PretrainParams = Field(
        default_factory=PretrainParams, description=PretrainParams.__doc__
    )
    finetune: FinetuneParams = Field(
        default_factory=FinetuneParams, description=FinetuneParams.__doc__
    )
    promotion: PromotionParams = Field(
        default_factory=PromotionParams, description=PromotionParams.__doc__
    )
    teacher: TeacherParams = Field(default_factory=TeacherParams, description=TeacherParams.__doc__)

    @model_validator(mode="before")
    @classmethod
    def _into_sections(cls, data: Any) -> Any:
        return nested(data) if isinstance(data, Mapping) else data

    def at_length(self, serving_max_length: int) -> JobParams:
        """These parameters with `max_length` filled in: by default a candidate trains at
        the length it will be evaluated and served at."""
        if self.max_length is not None:
            return self
        return self.model_copy(update={"max_length": serving_max_length})

    def updated(self, values: Mapping[str, Any]) -> JobParams:
        """These parameters with `values` (nested, dotted or flat names) put over them,
        validated again."""
        return JobParams.model_validate(merged(self.model_dump(), values))


def sections() -> dict[str, type[Section]]:
    """The sections of JobParams by name, in their order."""
    out: dict[str, type[Section]] = {}
    for name, field in JobParams.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, Section):
            out[name] = kind
    return out


def flat_name(section: type[Section], field: str) -> str:
    """The name `field` of `section` has in a flat body (see the module docstring)."""
    extra = section.model_fields[field].json_schema_extra
    declared = extra.get("flat_name") if isinstance(extra, dict) else None
    return declared if isinstance(declared, str) else section.flat_prefix + field


SECTIONS = sections()
# Flat name -> (section, field): computed from the declarations above, never written out.
FLAT_NAMES = {
    flat_name(kind, field): (section, field)
    for section, kind in SECTIONS.items()
    for field in kind.model_fields
}


def nested(values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` with each flat (`pretrain_epochs`) or dotted (`pretrain.epochs`) name moved
    into its section. Other names stay where they are, for validation to accept or refuse;
    a parameter given twice is refused."""
    out: dict[str, Any] = {}
    moves: list[tuple[str, str, str, Any]] = []
    for key, value in values.items():
        section, dot, field = str(key).partition(".")
        if key in FLAT_NAMES:
            moves.append((key, *FLAT_NAMES[key], value))
        elif dot and section in SECTIONS and field in SECTIONS[section].model_fields:
            moves.append((key, section, field, value))
        else:
            out[key] = value
    for key, section, field, value in moves:
        given = out.get(section, {})
        if not isinstance(given, Mapping):
            raise ValueError(f"{key} is given, and {section} is not an object")
        if field in given:
            raise ValueError(f"{key} is given twice (also as {section}.{field})")
        out[section] = {**given, field: value}
    return out


def merged(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """One body from `layers` (each nested, dotted or flat), a later layer's parameter
    over an earlier one's, section by section."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in nested(layer).items():
            given = out.get(key)
            if isinstance(given, Mapping) and isinstance(value, Mapping) and key in SECTIONS:
                out[key] = {**given, **value}
            else:
                out[key] = value
    return out


def assignment(text: str) -> tuple[str, Any]:
    """One parameter from a command line, `NAME=VALUE`: the value is read as JSON where it
    parses (a number, true, null), else as text (label_mode=hard). NAME is any name a body
    takes: flat, dotted or top-level."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected NAME=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed
