"""Parameters of a retraining job: what `POST /jobs` accepts, all optional.

The defaults are the `kd` row of `make repro` (docs/ablation.md), the paper's final
method, which beat its compute-matched gold-only control on test in every seed. The
student starts from the base encoder and learns the serving model's logits (KL, soft
labels) on the clean texts of the pool (the newest texts that the step budget covers:
all of the demo data's), with no masked-LM loss; then it is
fine-tuned on gold, keeping its best dev checkpoint. bf16 where the CPU computes it
natively.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class JobParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

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
    min_confidence: float | None = Field(
        None, ge=0.0, le=1.0, description="Drop pseudo-labels below this confidence."
    )
    max_confidence: float | None = Field(
        None, ge=0.0, le=1.0, description="Drop pseudo-labels above this confidence."
    )
    max_pool_texts: int = Field(
        0,
        ge=0,
        description="Use at most this many of the newest pseudo-labeled texts (0: as many as "
        "the pre-training steps cover: pretrain_step_budget x batch_size / pretrain_epochs).",
    )
    pool_class_cap: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="No predicted class takes more than this share of the pool's limit, so a "
        "majority class does not swamp it (0: no cap).",
    )
    top_k_share: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Class-balanced top-K: keep the K most confident pseudo-labels of each "
        "predicted class, K = this share of the pool / the number of classes (0: every one).",
    )
    student_layers: int = Field(
        0,
        ge=0,
        le=48,
        description="Encoder layers of the candidate, kept evenly spaced from the start model "
        "(6 -> 3 keeps 0, 2, 4); 0: all of them. Fewer layers serve faster.",
    )
    token_deletion: float = Field(
        0.0,
        ge=0.0,
        le=0.5,
        description="Noise on the student's input in pre-training: share of tokens dropped.",
    )
    mlm_warmup_steps: int = Field(
        0,
        ge=0,
        description="With MLM: steps that train the new MLM head alone before the joint loss.",
    )
    pretrain_epochs: float = Field(1.0, gt=0.0, le=100.0, description="Epochs over the pool.")
    pretrain_max_steps: int = Field(
        0, ge=0, description="Exact pre-training steps; overrides epochs (0: use epochs)."
    )
    pretrain_step_budget: int = Field(
        400,
        ge=0,
        description="At most this many pre-training steps however large the store grows: the "
        "pool is the newest texts they cover (0: no bound, every stored text).",
    )
    pretrain_learning_rate: float = Field(
        5e-5,
        gt=0.0,
        le=1.0,
        description="AdamW learning rate of pre-training (linear warm-up, decay).",
    )
    finetune_epochs: float = Field(1.0, gt=0.0, le=100.0, description="Epochs over gold train.")
    finetune_max_steps: int = Field(
        0, ge=0, description="Exact fine-tuning steps; overrides epochs (0: use epochs)."
    )
    finetune_learning_rate: float = Field(
        5e-5,
        gt=0.0,
        le=1.0,
        description="AdamW learning rate of fine-tuning (linear warm-up, decay).",
    )
    finetune_eval_every: int = Field(
        40,
        ge=0,
        description="Score gold dev every this many fine-tuning steps and keep the best "
        "weights (0: keep the last).",
    )
    finetune_patience: int = Field(
        5,
        ge=0,
        description="Stop fine-tuning after this many dev scorings without a gain (0: never).",
    )
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
        description="Training arithmetic: bf16 autocast (about 1.7x faster where the CPU has "
        "native bf16), fp32, or auto (bf16 where it is fast).",
    )
    promotion_rule: Literal["better", "faster_no_worse"] = Field(
        "better",
        description="better: publish a candidate shown better on dev; faster_no_worse: also "
        "one that serves faster and is shown to lose at most promotion_tolerance.",
    )
    promotion_margin: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="Dev macro-F1 gain the candidate must be shown to exceed (at "
        "promotion_confidence); default: the PROMOTION_MARGIN setting.",
    )
    promotion_tolerance: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="faster_no_worse: the dev macro-F1 a faster candidate may be shown to "
        "lose at most.",
    )
    promotion_confidence: float = Field(
        0.95,
        ge=0.5,
        lt=1.0,
        description="Confidence of the paired bootstrap on dev behind every promotion.",
    )

    @model_validator(mode="after")
    def _something_to_learn(self) -> JobParams:
        if self.mlm_weight == 0.0 and self.task_weight == 0.0:
            raise ValueError("mlm_weight and task_weight cannot both be 0: nothing to pre-train")
        if (
            self.min_confidence is not None
            and self.max_confidence is not None
            and self.min_confidence > self.max_confidence
        ):
            raise ValueError("min_confidence is above max_confidence: no pseudo-label is left")
        return self

    def at_length(self, serving_max_length: int) -> JobParams:
        """These parameters with `max_length` filled in: by default a candidate trains at
        the length it will be evaluated and served at."""
        if self.max_length is not None:
            return self
        return self.model_copy(update={"max_length": serving_max_length})
