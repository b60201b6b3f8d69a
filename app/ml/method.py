"""Steps 3 and 4 of the method, driven by a job's parameters: joint pre-training on the
pseudo-labels, then fine-tuning on the gold labels. The retraining job and the ablation
(`pfp repro`) both call these, so the table measures exactly what the workers run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.ml.job_params import JobParams
from app.ml.joint import JointModel
from app.ml.modeling import init_classifier
from app.ml.training import (
    LoopConfig,
    LossHistory,
    PretrainConfig,
    ProgressFn,
    fine_tune,
    pretrain_joint,
)


def _loop(params: JobParams, epochs: float, max_steps: int, learning_rate: float) -> dict[str, Any]:
    """What both stages take from the job's parameters; only their length and rate differ."""
    return {
        "epochs": epochs,
        "max_steps": max_steps,
        "learning_rate": learning_rate,
        "batch_size": params.batch_size,
        "max_length": params.max_length,
        "seed": params.seed,
        "bf16": params.use_bf16(),
    }


def pretrain_config(params: JobParams) -> PretrainConfig:
    return PretrainConfig(
        **_loop(
            params,
            params.pretrain_epochs,
            params.pretrain_max_steps,
            params.pretrain_learning_rate,
        ),
        mlm_weight=params.mlm_weight,
        task_weight=params.task_weight,
        mlm_probability=params.mlm_probability,
        soft_labels=params.label_mode == "soft",
        temperature=params.temperature,
        task_on_clean_input=params.task_input == "clean",
    )


def finetune_config(params: JobParams) -> LoopConfig:
    return LoopConfig(
        **_loop(
            params,
            params.finetune_epochs,
            params.finetune_max_steps,
            params.finetune_learning_rate,
        )
    )


def pretrain_on_predictions(
    start: Path,
    labels: list[str],
    texts: Sequence[str],
    teacher_logits: Sequence[Sequence[float]],
    params: JobParams,
    progress: ProgressFn,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, LossHistory]:
    """Model C: the encoder at `start` (the base encoder or a classifier) pre-trained with
    the joint loss on (texts, teacher_logits). The MLM head is dropped afterwards: it is not
    part of the served model."""
    model, tokenizer = init_classifier(start, labels)
    joint = JointModel.from_classifier(model, start)
    history = pretrain_joint(
        joint, tokenizer, texts, teacher_logits, pretrain_config(params), progress
    )
    return model, tokenizer, history


def fine_tune_on_gold(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    labels: Sequence[str],
    params: JobParams,
    progress: ProgressFn,
) -> LossHistory:
    """Model D: fine-tune (in place) on the gold train split."""
    return fine_tune(model, tokenizer, texts, labels, finetune_config(params), progress)
