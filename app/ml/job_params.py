"""Parameters of a retraining job: what `POST /jobs` accepts, all optional.

The defaults are the row of our ablation (`make repro`, README "Does it work?") with the
best dev macro-F1: pre-training starts from the model now serving (the teacher), soft
labels, masked-LM and task loss summed unweighted, every pseudo-label (no confidence
filter), bf16 where the CPU computes it natively.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.ml.training import cpu_has_fast_bf16


class JobParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start_from: Literal["base", "active"] = Field(
        "active",
        description="Encoder that pre-training starts from: the base encoder or the active model.",
    )
    mlm_weight: float = Field(1.0, ge=0.0, le=100.0, description="Weight of the masked-LM loss.")
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
        "masked",
        description="Task loss on the masked input (one pass) or on the clean text (two passes).",
    )
    temperature: float = Field(1.0, gt=0.0, le=20.0, description="Softmax temperature, soft mode.")
    mlm_probability: float = Field(0.15, gt=0.0, lt=1.0, description="Share of tokens masked.")
    min_confidence: float | None = Field(
        None, ge=0.0, le=1.0, description="Drop pseudo-labels below this confidence."
    )
    max_pool_texts: int = Field(
        0, ge=0, description="Use at most this many of the newest pseudo-labeled texts (0: all)."
    )
    pretrain_epochs: float = Field(1.0, gt=0.0, le=100.0, description="Epochs over the pool.")
    pretrain_max_steps: int = Field(
        0, ge=0, description="Exact pre-training steps; overrides epochs (0: use epochs)."
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
    batch_size: int = Field(32, ge=1, le=1024, description="Texts per training step.")
    max_length: int = Field(128, ge=8, le=512, description="Tokens per text.")
    seed: int = Field(13, ge=0, description="Seed of shuffling, masking and initialisation.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Training arithmetic: bf16 autocast (about 1.7x faster where the CPU has "
        "native bf16), fp32, or auto (bf16 where it is fast).",
    )
    promotion_margin: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="Dev macro-F1 gain needed to publish; default: the PROMOTION_MARGIN setting.",
    )

    @model_validator(mode="after")
    def _something_to_learn(self) -> JobParams:
        if self.mlm_weight == 0.0 and self.task_weight == 0.0:
            raise ValueError("mlm_weight and task_weight cannot both be 0: nothing to pre-train")
        return self

    def use_bf16(self) -> bool:
        if self.precision == "auto":
            return cpu_has_fast_bf16()
        return self.precision == "bf16"
