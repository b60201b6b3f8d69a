"""Steps 3 and 4 of the method, driven by a job's parameters: the student, pre-trained
on the pseudo-labels; fine-tuning it on the gold labels is `training.fine_tune`. The
retraining job and the ablation (`python -m research`) both call these, so the table
measures exactly what the workers run.
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
from app.ml.pretraining import pretrain_joint
from app.ml.training import LossHistory, ProgressFn


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
    kept = balanced_top_share(teacher_logits, params.pool.top_k_share)
    model, tokenizer = student(start, labels, params)
    # The MLM head only exists when it is trained; its source is the start folder.
    with_mlm = params.pretrain.mlm_weight > 0
    joint = JointModel.from_classifier(model, start) if with_mlm else JointModel(model)
    history = pretrain_joint(
        joint,
        tokenizer,
        [texts[i] for i in kept],
        [teacher_logits[i] for i in kept],
        params,
        progress,
    )
    history.notes["pool"] = {"given": len(texts), "used": len(kept)}
    return model, tokenizer, history
