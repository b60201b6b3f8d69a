"""Steps 3 and 4 of the method, driven by a job's parameters: pre-training on the
pseudo-labels, then fine-tuning on the gold labels. The retraining job and the ablation
(`pfp repro`) both call these, so the table measures exactly what the workers run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.ml.job_params import JobParams
from app.ml.joint import JointModel
from app.ml.modeling import init_classifier
from app.ml.pool import balanced_top_share
from app.ml.training import (
    LoopConfig,
    LossHistory,
    PretrainConfig,
    ProgressFn,
    cpu_has_fast_bf16,
    fine_tune,
    pretrain_joint,
)

Dev = tuple[Sequence[str], Sequence[str]]  # gold dev (texts, labels): picks the checkpoint


def in_bf16(params: JobParams) -> bool:
    """Whether training runs under bf16 autocast: `precision`, with `auto` resolved for
    this CPU (bf16 only where it computes it natively)."""
    if params.precision == "auto":
        return cpu_has_fast_bf16()
    return params.precision == "bf16"


def _loop(params: JobParams, epochs: float, max_steps: int, learning_rate: float) -> dict[str, Any]:
    """What both stages take from the job's parameters; only their length and rate differ.
    This and the two functions below are the one place where a job's parameters become
    training loop configurations."""
    if params.max_length is None:
        raise ValueError("max_length is not set: resolve it with JobParams.at_length first")
    return {
        "epochs": epochs,
        "max_steps": max_steps,
        "learning_rate": learning_rate,
        "batch_size": params.batch_size,
        "max_length": params.max_length,
        "truncation": params.truncation,
        "seed": params.seed,
        "bf16": in_bf16(params),
    }


def pretrain_config(params: JobParams) -> PretrainConfig:
    return PretrainConfig(
        **_loop(
            params,
            params.pretrain_epochs,
            params.pretrain_max_steps,
            params.pretrain_learning_rate,
        ),
        step_budget=params.pretrain_step_budget,
        mlm_weight=params.mlm_weight,
        task_weight=params.task_weight,
        mlm_probability=params.mlm_probability,
        label_mode=params.label_mode,
        temperature=params.temperature,
        task_input=params.task_input,
        token_deletion=params.token_deletion,
        mlm_warmup_steps=params.mlm_warmup_steps,
    )


def finetune_config(params: JobParams) -> LoopConfig:
    return LoopConfig(
        **_loop(
            params,
            params.finetune_epochs,
            params.finetune_max_steps,
            params.finetune_learning_rate,
        ),
        eval_every=params.finetune_eval_every,
        patience=params.finetune_patience,
    )


def student(start: Path, labels: list[str], params: JobParams) -> tuple[PreTrainedModel, Any]:
    """The model a job trains: `start` with `student_layers` of its layers. Its new weights
    (a fresh head) are drawn from the job's seed, so a job can be run again exactly."""
    torch.manual_seed(params.seed)
    return init_classifier(start, labels, params.student_layers)


def pretrain_on_predictions(
    start: Path,
    labels: list[str],
    texts: Sequence[str],
    teacher_logits: Sequence[Sequence[float]],
    params: JobParams,
    progress: ProgressFn,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, LossHistory]:
    """Model C: the student (see `student`) pre-trained on (texts, teacher_logits): the
    task loss on the teacher's predictions, plus the masked-LM loss if `mlm_weight` > 0.
    The MLM head is dropped afterwards: it is not part of the served model."""
    kept = balanced_top_share(teacher_logits, params.top_k_share)
    model, tokenizer = student(start, labels, params)
    # The MLM head only exists when it is trained; its source is the start folder.
    joint = JointModel.from_classifier(model, start) if params.mlm_weight else JointModel(model)
    history = pretrain_joint(
        joint,
        tokenizer,
        [texts[i] for i in kept],
        [teacher_logits[i] for i in kept],
        pretrain_config(params),
        progress,
    )
    history.notes["pool"] = {"given": len(texts), "used": len(kept)}
    return model, tokenizer, history


def fine_tune_on_gold(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    labels: Sequence[str],
    params: JobParams,
    progress: ProgressFn,
    dev: Dev | None = None,
) -> LossHistory:
    """Model D: fine-tune (in place) on the gold train split, keeping the weights with the
    best macro-F1 on `dev`."""
    return fine_tune(model, tokenizer, texts, labels, finetune_config(params), progress, dev)
