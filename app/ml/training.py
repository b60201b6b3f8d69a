"""The training steps of the method: fine-tuning on gold labels (keeping the checkpoint
with the best dev macro-F1), pre-training on pseudo-labels, and evaluation. Plain
functions over models and lists: the Celery job, the first-model bootstrap, the ablation
and the tests all call these same functions.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.ml.joint import JointModel, mask_tokens
from app.ml.metrics import accuracy, macro_f1
from app.ml.modeling import (
    TRUNCATION_ATTRIBUTE,
    Classifier,
    Truncation,
    encode_texts,
    labels_of,
)

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
    step_budget: int = 0  # > 0: at most this many steps where `epochs` would take more
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
    truncation: Truncation = "head"
    # Fine-tuning with a dev set: score it every `eval_every` steps and at the end, keep the
    # weights with the best dev macro-F1, and stop after `patience` scorings without a gain
    # (0: run every step). With few labels the best step is hard to guess, so it is
    # measured on dev rather than set; every row of `make repro` is chosen this way.
    eval_every: int = 0
    patience: int = 0

    def total_steps(self, n_examples: int) -> int:
        if self.max_steps > 0:
            return self.max_steps
        per_epoch = math.ceil(n_examples / self.batch_size)
        steps = max(1, math.ceil(self.epochs * per_epoch))
        return min(steps, self.step_budget) if self.step_budget > 0 else steps


@dataclass
class LossHistory:
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)
    # Facts beside the curves (not series over steps): the dev selection of fine-tuning,
    # the MLM head's warm-up.
    notes: dict[str, object] = field(default_factory=dict)

    def add(self, step: int, loss: float, **extra: float) -> None:
        self.steps.append(step)
        self.loss.append(round(loss, 5))
        for key, value in extra.items():
            self.extra.setdefault(key, []).append(round(value, 5))

    def as_dict(self) -> dict[str, object]:
        return {"step": self.steps, "loss": self.loss, **self.extra, **self.notes}


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
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], config: LoopConfig
) -> list[list[int]]:
    return encode_texts(tokenizer, list(texts), config.max_length, config.truncation)["input_ids"]


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
    # The fused kernel does the same update in one pass over the weights: measured on a
    # 2-core CPU, 29 ms instead of 117 ms of a 392 ms MiniLM step (batch 32).
    fused = all(p.device.type in ("cpu", "cuda") for p in decay + no_decay)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
        fused=fused,
    )
    warmup = max(1, int(total_steps * config.warmup_fraction))

    def schedule(step: int) -> float:
        # Linear warm-up, then linear decay to zero: the usual BERT fine-tuning schedule.
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


@dataclass
class DevSelection:
    """Which fine-tuning step was kept, and the dev macro-F1 seen along the way."""

    best_step: int = 0
    best_macro_f1: float = -1.0
    steps: list[int] = field(default_factory=list)
    macro_f1: list[float] = field(default_factory=list)
    stopped_early: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "best_step": self.best_step,
            "best_macro_f1": round(self.best_macro_f1, 5),
            "steps": self.steps,
            "macro_f1": self.macro_f1,
            "stopped_early": self.stopped_early,
        }


def _dev_macro_f1(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dev: tuple[Sequence[str], Sequence[str]],
    config: LoopConfig,
) -> float:
    labels = labels_of(model)
    classifier = Classifier(model, tokenizer, labels, config.max_length, config.truncation)
    model.eval()  # type: ignore[no-untyped-call]
    with _autocast(config):
        score = evaluate(classifier, *dev)["macro_f1"]
    model.train()
    return float(score)


def fine_tune(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    labels: Sequence[str],
    config: LoopConfig,
    progress: ProgressFn = _no_progress,
    dev: tuple[Sequence[str], Sequence[str]] | None = None,
) -> LossHistory:
    """Cross-entropy fine-tuning on gold (text, label) pairs; labels are names in the
    model's `config.label2id`. With `dev` (texts, labels) and `config.eval_every`, the
    model ends with the weights of its best dev macro-F1 (see LoopConfig); the history's
    `selection` says which step that was."""
    if not texts:
        raise ValueError("no gold training examples to fine-tune on")
    label2id: dict[str, int] = {str(k): int(v) for k, v in (model.config.label2id or {}).items()}
    unknown = sorted({label for label in labels if label not in label2id})
    if unknown:
        raise ValueError(f"gold labels not in the model's label set: {unknown}")
    torch.manual_seed(config.seed)
    # The served model cuts long texts the way it was trained to (see modeling.Truncation).
    setattr(model.config, TRUNCATION_ATTRIBUTE, config.truncation)
    ids = _encode(tokenizer, texts, config)
    targets = torch.tensor([label2id[label] for label in labels])
    total = config.total_steps(len(ids))
    optimizer, scheduler = _optimizer(model, config, total)
    batches = length_grouped_batches(
        [len(x) for x in ids], config.batch_size, random.Random(config.seed)
    )
    history = LossHistory()
    selecting = dev is not None and bool(dev[0]) and config.eval_every > 0
    selection = DevSelection()
    best_state: dict[str, torch.Tensor] | None = None
    since_best = 0
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
        done = step + 1
        if selecting and (done % config.eval_every == 0 or done == total):
            assert dev is not None
            score = _dev_macro_f1(model, tokenizer, dev, config)
            selection.steps.append(done)
            selection.macro_f1.append(round(score, 5))
            if score > selection.best_macro_f1:
                selection.best_step, selection.best_macro_f1 = done, score
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                since_best = 0
            else:
                since_best += 1
                if config.patience and since_best >= config.patience and done < total:
                    selection.stopped_early = True
                    progress(1.0, loss)
                    break
        progress(done / total, loss)
    if best_state is not None:
        model.load_state_dict(best_state)
    if selecting:
        history.notes["selection"] = selection.as_dict()
    model.eval()  # type: ignore[no-untyped-call]
    return history


@dataclass
class PretrainConfig(LoopConfig):
    """Pre-training on the pseudo-labels (step 3 of the method)."""

    mlm_weight: float = 1.0
    task_weight: float = 1.0  # 0: masked-LM only (task-adaptive pre-training)
    mlm_probability: float = 0.15
    # hard: cross-entropy to the teacher's label; soft: KL to its logits at `temperature`.
    label_mode: Literal["hard", "soft"] = "hard"
    temperature: float = 1.0
    # The task loss on the masked input (one pass) or on the clean text (a second pass).
    task_input: Literal["masked", "clean"] = "masked"
    # Noise on the student's input (Noisy Student, He et al. 2020): each real token is
    # dropped with this probability; the teacher's logits were computed on the clean text.
    token_deletion: float = 0.0
    # Steps that train only a newly initialised MLM head (encoder frozen) before the joint
    # loss, so that a random head does not push the encoder around at first.
    mlm_warmup_steps: int = 0


# A fresh MLM head learns from nothing during its warm-up: a rate far above fine-tuning's.
MLM_WARMUP_LEARNING_RATE = 1e-3


def delete_tokens(
    ids: list[int], probability: float, special: set[int], rng: random.Random
) -> list[int]:
    """`ids` with each non-special token dropped with `probability`; at least one kept."""
    kept = [t for t in ids if t in special or rng.random() >= probability]
    if all(t in special for t in kept):
        real = [t for t in ids if t not in special]
        if real:
            kept = [t for t in ids if t in special]
            kept.insert(1 if kept else 0, rng.choice(real))
    return kept


def _warm_up_mlm_head(
    joint: JointModel,
    tokenizer: PreTrainedTokenizerBase,
    ids: list[list[int]],
    config: PretrainConfig,
    generator: torch.Generator,
) -> list[float]:
    """Train the MLM head alone (the encoder and the tied embeddings frozen)."""
    assert joint.mlm_head is not None
    frozen = [p for p in joint.classifier.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    head = [p for p in joint.mlm_head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(head, lr=MLM_WARMUP_LEARNING_RATE)
    batches = length_grouped_batches(
        [len(x) for x in ids], config.batch_size, random.Random(config.seed + 1)
    )
    losses: list[float] = []
    joint.train()
    try:
        for _ in range(config.mlm_warmup_steps):
            encoded = _pad(tokenizer, [ids[i] for i in next(batches)])
            masked, mlm_labels = _mask(tokenizer, encoded, config, generator)
            with _autocast(config):
                out = joint(
                    input_ids=masked,
                    attention_mask=encoded["attention_mask"],
                    mlm_labels=mlm_labels,
                    task_weight=0.0,
                )
            out.mlm_loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(round(out.mlm_loss.item(), 5))
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return losses


def _mask(
    tokenizer: PreTrainedTokenizerBase,
    encoded: dict[str, torch.Tensor],
    config: PretrainConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    special = torch.tensor(
        [
            tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True)
            for row in encoded["input_ids"].tolist()
        ]
    )
    special |= encoded["attention_mask"] == 0
    return mask_tokens(encoded["input_ids"], special, tokenizer, config.mlm_probability, generator)


def pretrain_joint(
    joint: JointModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    teacher_logits: Sequence[Sequence[float]],
    config: PretrainConfig,
    progress: ProgressFn = _no_progress,
) -> LossHistory:
    """Task loss on pseudo-labeled texts (plus `mlm_weight` x masked-LM loss). Hard labels
    are the argmax of the stored teacher logits; soft labels distil from the logits."""
    if not texts:
        raise ValueError("no pseudo-labeled texts to pre-train on")
    if len(texts) != len(teacher_logits):
        raise ValueError("texts and teacher_logits differ in length")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    noise = random.Random(config.seed + 2)
    special_ids = set(tokenizer.all_special_ids)
    ids = _encode(tokenizer, texts, config)
    logits = torch.tensor([list(row) for row in teacher_logits], dtype=torch.float32)
    hard = logits.argmax(-1)
    use_mlm = config.mlm_weight > 0
    history = LossHistory()
    if use_mlm and config.mlm_warmup_steps:
        warmup = _warm_up_mlm_head(joint, tokenizer, ids, config, generator)
        history.notes["mlm_warmup"] = {
            "steps": len(warmup),
            "first_loss": warmup[0],
            "last_loss": warmup[-1],
        }
    total = config.total_steps(len(ids))
    optimizer, scheduler = _optimizer(joint, config, total)
    batches = length_grouped_batches(
        [len(x) for x in ids], config.batch_size, random.Random(config.seed)
    )
    joint.train()
    for step in range(total):
        batch = next(batches)
        rows = [ids[i] for i in batch]
        if config.token_deletion:
            rows = [delete_tokens(r, config.token_deletion, special_ids, noise) for r in rows]
        encoded = _pad(tokenizer, rows)
        if use_mlm:
            student_input, mlm_labels = _mask(tokenizer, encoded, config, generator)
            clean = encoded["input_ids"] if config.task_input == "clean" else None
        else:
            # No MLM: one pass over the (noised) text itself; nothing is masked.
            student_input, clean = encoded["input_ids"], None
            mlm_labels = torch.full_like(student_input, -100)
        with _autocast(config):
            out = joint(
                input_ids=student_input,
                attention_mask=encoded["attention_mask"],
                mlm_labels=mlm_labels,
                hard_labels=None if config.label_mode == "soft" else hard[batch],
                teacher_logits=logits[batch] if config.label_mode == "soft" else None,
                mlm_weight=config.mlm_weight,
                temperature=config.temperature,
                clean_input_ids=clean,
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


def logits_in_order(
    classifier: Classifier,
    texts: Sequence[str],
    progress: ProgressFn = _no_progress,
    batch_size: int = 64,
) -> list[list[float]]:
    """The logits of each text, in order. Texts are scored in batches of similar length
    (far less padding) and put back in their order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[list[float]] = [[] for _ in texts]
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for i, row in zip(
            chunk, classifier.logits([texts[i] for i in chunk]).tolist(), strict=True
        ):
            out[i] = row
        progress(min(1.0, (start + batch_size) / max(1, len(texts))), 0.0)
    return out


def predict(
    classifier: Classifier,
    texts: Sequence[str],
    progress: ProgressFn = _no_progress,
    batch_size: int = 64,
) -> list[str]:
    """The predicted label of each text, in order."""
    logits = logits_in_order(classifier, texts, progress, batch_size)
    return [classifier.labels[max(range(len(row)), key=row.__getitem__)] for row in logits]


def scores(
    gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]
) -> dict[str, float]:
    """Accuracy and macro-F1 (over `labels` and every gold label) of `predicted`."""
    label_set = sorted(set(gold) | set(labels))
    return {
        "accuracy": round(accuracy(gold, predicted), 5),
        "macro_f1": round(macro_f1(gold, predicted, label_set), 5),
        "n": len(gold),
    }


def evaluate(
    classifier: Classifier,
    texts: Sequence[str],
    labels: Sequence[str],
    progress: ProgressFn = _no_progress,
    batch_size: int = 64,
) -> dict[str, float]:
    """Accuracy and macro-F1 of `classifier` on (texts, labels)."""
    return scores(labels, predict(classifier, texts, progress, batch_size), classifier.labels)
