"""The training steps of the method: fine-tuning on gold labels, joint pre-training on
pseudo-labels, and evaluation. Plain functions over models and lists: the Celery job, the
first-model bootstrap and the tests all call these same functions.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.ml.joint import JointModel, mask_tokens
from app.ml.metrics import accuracy, macro_f1
from app.ml.modeling import Classifier

# Called with (fraction of this stage done, loss of the last step). It may raise to stop
# training: that is how a cancelled job ends between two steps.
ProgressFn = Callable[[float, float], None]


def _no_progress(_fraction: float, _loss: float) -> None:
    return None


@dataclass
class LoopConfig:
    """What every training loop here shares."""

    epochs: float = 1.0
    max_steps: int = 0  # > 0: exactly this many steps, whatever `epochs` says (as HF Trainer)
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01
    max_length: int = 128
    seed: int = 13
    log_every: int = 10
    # bf16 autocast of the forward pass on the CPU: about 1.7x faster steps where the CPU
    # has native bf16 (avx512_bf16 / AMX); weights and optimizer state stay fp32.
    bf16: bool = False

    def total_steps(self, n_examples: int) -> int:
        if self.max_steps > 0:
            return self.max_steps
        per_epoch = math.ceil(n_examples / self.batch_size)
        return max(1, math.ceil(self.epochs * per_epoch))


@dataclass
class LossHistory:
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)

    def add(self, step: int, loss: float, **extra: float) -> None:
        self.steps.append(step)
        self.loss.append(round(loss, 5))
        for key, value in extra.items():
            self.extra.setdefault(key, []).append(round(value, 5))

    def as_dict(self) -> dict[str, list[float] | list[int]]:
        return {"step": self.steps, "loss": self.loss, **self.extra}


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random
) -> Iterator[list[int]]:
    """Endless batches of indices: shuffled, then sorted by length within chunks of 50
    batches, so each batch pads to similar lengths without a fixed order of batches."""
    indices = list(range(len(lengths)))
    while True:
        rng.shuffle(indices)
        chunk = batch_size * 50
        batches: list[list[int]] = []
        for start in range(0, len(indices), chunk):
            group = sorted(indices[start : start + chunk], key=lambda i: lengths[i])
            batches.extend(group[b : b + batch_size] for b in range(0, len(group), batch_size))
        rng.shuffle(batches)
        yield from batches


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True where the CPU computes bf16 natively; elsewhere autocast emulates it slowly."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _autocast(config: LoopConfig) -> contextlib.AbstractContextManager[object]:
    if config.bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _encode(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> list[list[int]]:
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def _pad(tokenizer: PreTrainedTokenizerBase, ids: list[list[int]]) -> dict[str, torch.Tensor]:
    return dict(tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt"))


def _optimizer(
    model: torch.nn.Module, config: LoopConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
    )
    warmup = max(1, int(total_steps * config.warmup_fraction))

    def schedule(step: int) -> float:
        # Linear warm-up, then linear decay to zero: the usual BERT fine-tuning schedule.
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def fine_tune(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    labels: Sequence[str],
    config: LoopConfig,
    progress: ProgressFn = _no_progress,
) -> LossHistory:
    """Cross-entropy fine-tuning on gold (text, label) pairs; labels are names in the
    model's `config.label2id`."""
    if not texts:
        raise ValueError("no gold training examples to fine-tune on")
    label2id: dict[str, int] = {str(k): int(v) for k, v in (model.config.label2id or {}).items()}
    unknown = sorted({label for label in labels if label not in label2id})
    if unknown:
        raise ValueError(f"gold labels not in the model's label set: {unknown}")
    torch.manual_seed(config.seed)
    ids = _encode(tokenizer, texts, config.max_length)
    targets = torch.tensor([label2id[label] for label in labels])
    total = config.total_steps(len(ids))
    optimizer, scheduler = _optimizer(model, config, total)
    batches = length_grouped_batches(
        [len(x) for x in ids], config.batch_size, random.Random(config.seed)
    )
    history = LossHistory()
    model.train()
    for step in range(total):
        batch = next(batches)
        encoded = _pad(tokenizer, [ids[i] for i in batch])
        with _autocast(config):
            out = model(
                input_ids=encoded["input_ids"],
                attention_mask=encoded["attention_mask"],
                labels=targets[batch],
            )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss = out.loss.detach().item()
        if step % config.log_every == 0 or step == total - 1:
            history.add(step, loss)
        progress((step + 1) / total, loss)
    model.eval()
    return history


@dataclass
class PretrainConfig(LoopConfig):
    """The joint pre-training step (3 of the method)."""

    mlm_weight: float = 1.0
    task_weight: float = 1.0  # 0: masked-LM only (task-adaptive pre-training)
    mlm_probability: float = 0.15
    soft_labels: bool = False
    temperature: float = 1.0
    task_on_clean_input: bool = False


def pretrain_joint(
    joint: JointModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    teacher_logits: Sequence[Sequence[float]],
    config: PretrainConfig,
    progress: ProgressFn = _no_progress,
) -> LossHistory:
    """Masked-LM + task loss on pseudo-labeled texts. Hard labels are the argmax of the
    stored teacher logits; soft labels distil from the logits themselves."""
    if not texts:
        raise ValueError("no pseudo-labeled texts to pre-train on")
    if len(texts) != len(teacher_logits):
        raise ValueError("texts and teacher_logits differ in length")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    ids = _encode(tokenizer, texts, config.max_length)
    logits = torch.tensor([list(row) for row in teacher_logits], dtype=torch.float32)
    hard = logits.argmax(-1)
    total = config.total_steps(len(ids))
    optimizer, scheduler = _optimizer(joint, config, total)
    batches = length_grouped_batches(
        [len(x) for x in ids], config.batch_size, random.Random(config.seed)
    )
    history = LossHistory()
    joint.train()
    for step in range(total):
        batch = next(batches)
        encoded = _pad(tokenizer, [ids[i] for i in batch])
        special = torch.tensor(
            [
                tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True)
                for row in encoded["input_ids"].tolist()
            ]
        )
        special |= encoded["attention_mask"] == 0
        masked, mlm_labels = mask_tokens(
            encoded["input_ids"], special, tokenizer, config.mlm_probability, generator
        )
        with _autocast(config):
            out = joint(
                input_ids=masked,
                attention_mask=encoded["attention_mask"],
                mlm_labels=mlm_labels,
                hard_labels=None if config.soft_labels else hard[batch],
                teacher_logits=logits[batch] if config.soft_labels else None,
                mlm_weight=config.mlm_weight,
                temperature=config.temperature,
                clean_input_ids=encoded["input_ids"] if config.task_on_clean_input else None,
                task_weight=config.task_weight,
            )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(joint.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss = out.loss.detach().item()
        if step % config.log_every == 0 or step == total - 1:
            history.add(step, loss, task_loss=out.task_loss.item(), mlm_loss=out.mlm_loss.item())
        progress((step + 1) / total, loss)
    joint.eval()
    return history


def evaluate(
    classifier: Classifier,
    texts: Sequence[str],
    labels: Sequence[str],
    progress: ProgressFn = _no_progress,
    batch_size: int = 64,
) -> dict[str, float]:
    """Accuracy and macro-F1 of `classifier` on (texts, labels)."""
    predicted: list[str] = []
    for start in range(0, len(texts), batch_size):
        predicted.extend(classifier.predict(list(texts[start : start + batch_size]), batch_size))
        progress(min(1.0, (start + batch_size) / max(1, len(texts))), 0.0)
    label_set = sorted(set(labels) | set(classifier.labels))
    return {
        "accuracy": round(accuracy(labels, predicted), 5),
        "macro_f1": round(macro_f1(labels, predicted, label_set), 5),
        "n": len(texts),
    }
