"""Step 3 of the method: pre-training the student on the pseudo-labels, the task loss on
the teacher's predictions plus, if the job asks, the masked-LM loss from the same encoder
pass (app/ml/joint.py). It reads the job's `pretrain` section (app/ml/job_params.py) and
shares its loop pieces with fine-tuning (app/ml/training.py).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from app.ml.job_params import JobParams
from app.ml.joint import JointModel, mask_tokens
from app.ml.training import (
    LossHistory,
    ProgressFn,
    autocast,
    encode,
    length_grouped_batches,
    no_progress,
    on_curve,
    optimizer_and_schedule,
    optimizer_step,
    pad,
    pretrain_steps,
)

# A fresh MLM head learns from nothing during its warm-up: a rate far above fine-tuning's.
MLM_WARMUP_LEARNING_RATE = 1e-3


def delete_tokens(
    ids: list[int], probability: float, special: set[int], rng: random.Random
) -> list[int]:
    """`ids` with each non-special token dropped with `probability`; at least one kept.
    Noise on the student's input (Noisy Student, He et al. 2020)."""
    kept = [t for t in ids if t in special or rng.random() >= probability]
    if all(t in special for t in kept):
        real = [t for t in ids if t not in special]
        if real:
            kept = [t for t in ids if t in special]
            kept.insert(1 if kept else 0, rng.choice(real))
    return kept


def _mask(
    tokenizer: PreTrainedTokenizerBase,
    encoded: dict[str, torch.Tensor],
    mlm_probability: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    special = torch.tensor(
        [
            tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True)
            for row in encoded["input_ids"].tolist()
        ]
    )
    special |= encoded["attention_mask"] == 0
    return mask_tokens(encoded["input_ids"], special, tokenizer, mlm_probability, generator)


def _warm_up_mlm_head(
    joint: JointModel,
    tokenizer: PreTrainedTokenizerBase,
    ids: list[list[int]],
    params: JobParams,
    generator: torch.Generator,
) -> list[float]:
    """Train a newly initialised MLM head alone (the encoder and the tied embeddings
    frozen) for `pretrain.mlm_warmup_steps`, so that a random head does not push the
    encoder around when the joint loss starts."""
    assert joint.mlm_head is not None
    objective = params.pretrain
    frozen = [p for p in joint.classifier.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    head = [p for p in joint.mlm_head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(head, lr=MLM_WARMUP_LEARNING_RATE)
    batches = length_grouped_batches(
        [len(x) for x in ids], params.batch_size, random.Random(params.seed + 1)
    )
    # The head alone: no task loss, so no labels are needed.
    mlm_only = objective.model_copy(update={"task_weight": 0.0})
    losses: list[float] = []
    joint.train()
    try:
        for _ in range(objective.mlm_warmup_steps):
            encoded = pad(tokenizer, [ids[i] for i in next(batches)])
            masked, mlm_labels = _mask(tokenizer, encoded, objective.mlm_probability, generator)
            with autocast(params):
                out = joint(
                    input_ids=masked,
                    attention_mask=encoded["attention_mask"],
                    mlm_labels=mlm_labels,
                    objective=mlm_only,
                )
            out.mlm_loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(round(out.mlm_loss.item(), 5))
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return losses


def pretrain_joint(
    joint: JointModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    teacher_logits: Sequence[Sequence[float]],
    params: JobParams,
    progress: ProgressFn = no_progress,
) -> LossHistory:
    """The task loss on pseudo-labeled texts (plus `mlm_weight` x masked-LM loss), as
    `params.pretrain` says. Hard labels are the argmax of the stored teacher logits; soft
    labels distil from the logits."""
    if not texts:
        raise ValueError("no pseudo-labeled texts to pre-train on")
    if len(texts) != len(teacher_logits):
        raise ValueError("texts and teacher_logits differ in length")
    objective = params.pretrain
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    noise = random.Random(params.seed + 2)
    special_ids = set(tokenizer.all_special_ids)
    ids = encode(tokenizer, texts, params)
    logits = torch.tensor([list(row) for row in teacher_logits], dtype=torch.float32)
    hard = logits.argmax(-1)
    soft = objective.label_mode == "soft"
    use_mlm = objective.mlm_weight > 0
    history = LossHistory()
    if use_mlm and objective.mlm_warmup_steps:
        warmup = _warm_up_mlm_head(joint, tokenizer, ids, params, generator)
        history.notes["mlm_warmup"] = {
            "steps": len(warmup),
            "first_loss": warmup[0],
            "last_loss": warmup[-1],
        }
    total = pretrain_steps(params, len(ids))
    optimizer, scheduler = optimizer_and_schedule(joint, objective.learning_rate, total)
    batches = length_grouped_batches(
        [len(x) for x in ids], params.batch_size, random.Random(params.seed)
    )
    joint.train()
    for step in range(total):
        batch = next(batches)
        rows = [ids[i] for i in batch]
        if objective.token_deletion:
            rows = [delete_tokens(r, objective.token_deletion, special_ids, noise) for r in rows]
        encoded = pad(tokenizer, rows)
        if use_mlm:
            student_input, mlm_labels = _mask(
                tokenizer, encoded, objective.mlm_probability, generator
            )
            clean = encoded["input_ids"] if objective.task_input == "clean" else None
        else:
            # No MLM: one pass over the (noised) text itself; nothing is masked.
            student_input, clean = encoded["input_ids"], None
            mlm_labels = torch.full_like(student_input, -100)
        with autocast(params):
            out = joint(
                input_ids=student_input,
                attention_mask=encoded["attention_mask"],
                mlm_labels=mlm_labels,
                objective=objective,
                hard_labels=None if soft else hard[batch],
                teacher_logits=logits[batch] if soft else None,
                clean_input_ids=clean,
            )
        loss = optimizer_step(joint, out.loss, optimizer, scheduler)
        if on_curve(step, total):
            history.add(step, loss, task_loss=out.task_loss.item(), mlm_loss=out.mlm_loss.item())
        progress((step + 1) / total, loss)
    joint.eval()
    return history
