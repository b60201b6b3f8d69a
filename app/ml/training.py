"""The training steps of the method: the pieces both training stages share, fine-tuning on
gold labels (keeping the checkpoint with the best dev macro-F1), and evaluation. Plain
functions over models and lists that read a job's parameters (app/ml/job_params.py)
themselves: the Celery job, the first-model bootstrap, the ablation and the tests all call
these same functions with the same declaration. Pre-training on the pseudo-labels is in
app/ml/pretraining.py.
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

from app.ml.job_params import JobParams
from app.ml.metrics import accuracy, macro_f1
from app.ml.modeling import TRUNCATION_ATTRIBUTE, Classifier, encode_texts, labels_of

# Called with (fraction of this stage done, loss of the last step). It may raise to stop
# training: that is how a cancelled job ends between two steps.
ProgressFn = Callable[[float, float], None]

# Not job parameters: the usual BERT fine-tuning schedule and regularisation, which no job
# has had a reason to change, and how often a loss curve takes a point.
WARMUP_FRACTION = 0.06
WEIGHT_DECAY = 0.01
LOG_EVERY = 10
# Texts per forward pass when only scoring (no gradients): not the training batch.
SCORING_BATCH = 64


def no_progress(_fraction: float, _loss: float) -> None:
    return None


def on_curve(step: int, total: int) -> bool:
    """Whether step `step` of `total` takes a point of the loss curve."""
    return step % LOG_EVERY == 0 or step == total - 1


def total_steps(
    epochs: float, max_steps: int, step_budget: int, batch_size: int, n_examples: int
) -> int:
    """Optimizer steps of a stage: `max_steps` if set (as HF Trainer), else `epochs` over
    `n_examples`, at most `step_budget` where one is set (> 0)."""
    if max_steps > 0:
        return max_steps
    per_epoch = math.ceil(n_examples / batch_size)
    steps = max(1, math.ceil(epochs * per_epoch))
    return min(steps, step_budget) if step_budget > 0 else steps


def finetune_steps(params: JobParams, n_examples: int) -> int:
    """Fine-tuning steps: `max_steps` if set, else the epochs' steps but at least
    `min_steps`."""
    stage = params.finetune
    steps = total_steps(stage.epochs, stage.max_steps, 0, params.batch_size, n_examples)
    return steps if stage.max_steps > 0 else max(steps, stage.min_steps)


def pretrain_steps(params: JobParams, n_texts: int) -> int:
    stage = params.pretrain
    return total_steps(stage.epochs, stage.max_steps, stage.step_budget, params.batch_size, n_texts)


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


def in_bf16(params: JobParams) -> bool:
    """Whether training runs under bf16 autocast: `precision`, with `auto` resolved for
    this CPU (bf16 only where it computes it natively)."""
    if params.precision == "auto":
        return cpu_has_fast_bf16()
    return params.precision == "bf16"


def autocast(params: JobParams) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast of the forward pass where the job trains in bf16; weights and
    optimizer state stay fp32."""
    if in_bf16(params):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def max_length(params: JobParams) -> int:
    if params.max_length is None:
        raise ValueError("max_length is not set: resolve it with JobParams.at_length first")
    return params.max_length


def encode(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], params: JobParams
) -> list[list[int]]:
    ids: list[list[int]] = encode_texts(
        tokenizer, list(texts), max_length(params), params.truncation
    )["input_ids"]
    return ids


def pad(tokenizer: PreTrainedTokenizerBase, ids: list[list[int]]) -> dict[str, torch.Tensor]:
    return dict(tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt"))


def optimizer_and_schedule(
    model: torch.nn.Module, learning_rate: float, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW without decay on biases and LayerNorms; linear warm-up, then linear decay."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    # The fused kernel does the same update in one pass over the weights instead of one per
    # tensor: a large share of a CPU step's time (docs/ablation.md).
    fused = all(p.device.type in ("cpu", "cuda") for p in decay + no_decay)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": WEIGHT_DECAY},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=learning_rate,
        fused=fused,
    )
    warmup = max(1, int(steps * WARMUP_FRACTION))

    def schedule(step: int) -> float:
        # Linear warm-up, then linear decay to zero: the usual BERT fine-tuning schedule.
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def optimizer_step(
    model: torch.nn.Module,
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
) -> float:
    """Backward, clip, step, and the loss as a number."""
    loss.backward()  # type: ignore[no-untyped-call]
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach().item())


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
    params: JobParams,
) -> float:
    labels = labels_of(model)
    classifier = Classifier(model, tokenizer, labels, max_length(params), params.truncation)
    model.eval()  # type: ignore[no-untyped-call]
    with autocast(params):
        score = evaluate(classifier, *dev)["macro_f1"]
    model.train()
    return float(score)


def fine_tune(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    labels: Sequence[str],
    params: JobParams,
    progress: ProgressFn = no_progress,
    dev: tuple[Sequence[str], Sequence[str]] | None = None,
) -> LossHistory:
    """Model D: cross-entropy fine-tuning (in place) on gold (text, label) pairs, as
    `params.finetune` says; labels are names in the model's `config.label2id`. With `dev`
    (texts, labels) and `finetune.eval_every`, the model ends with the weights of its best
    dev macro-F1, the weights it started from included (step 0), and the history's
    `selection` says which step that was."""
    if not texts:
        raise ValueError("no gold training examples to fine-tune on")
    label2id: dict[str, int] = {str(k): int(v) for k, v in (model.config.label2id or {}).items()}
    unknown = sorted({label for label in labels if label not in label2id})
    if unknown:
        raise ValueError(f"gold labels not in the model's label set: {unknown}")
    stage = params.finetune
    torch.manual_seed(params.seed)
    # The served model cuts long texts the way it was trained to (see modeling.Truncation).
    setattr(model.config, TRUNCATION_ATTRIBUTE, params.truncation)
    ids = encode(tokenizer, texts, params)
    targets = torch.tensor([label2id[label] for label in labels])
    total = finetune_steps(params, len(ids))
    optimizer, scheduler = optimizer_and_schedule(model, stage.learning_rate, total)
    batches = length_grouped_batches(
        [len(x) for x in ids], params.batch_size, random.Random(params.seed)
    )
    history = LossHistory()
    selecting = dev is not None and bool(dev[0]) and stage.eval_every > 0
    selection = DevSelection()
    best_state: dict[str, torch.Tensor] | None = None
    since_best = 0
    if selecting:
        # The weights fine-tuning starts from compete too: a student that learned a
        # stronger teacher's predictions on the pool can score better on dev than
        # anything a few hundred gold labels then make of it (docs/ablation.md).
        assert dev is not None
        start = _dev_macro_f1(model, tokenizer, dev, params)
        selection.steps.append(0)
        selection.macro_f1.append(round(start, 5))
        selection.best_step, selection.best_macro_f1 = 0, start
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.train()
    for step in range(total):
        batch = next(batches)
        encoded = pad(tokenizer, [ids[i] for i in batch])
        with autocast(params):
            out = model(
                input_ids=encoded["input_ids"],
                attention_mask=encoded["attention_mask"],
                labels=targets[batch],
            )
        loss = optimizer_step(model, out.loss, optimizer, scheduler)
        if on_curve(step, total):
            history.add(step, loss)
        done = step + 1
        if selecting and (done % stage.eval_every == 0 or done == total):
            assert dev is not None
            score = _dev_macro_f1(model, tokenizer, dev, params)
            selection.steps.append(done)
            selection.macro_f1.append(round(score, 5))
            if score > selection.best_macro_f1:
                selection.best_step, selection.best_macro_f1 = done, score
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                since_best = 0
            else:
                since_best += 1
                if stage.patience and since_best >= stage.patience and done < total:
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


def logits_in_order(
    classifier: Classifier,
    texts: Sequence[str],
    progress: ProgressFn = no_progress,
    texts_per_batch: int = SCORING_BATCH,
) -> list[list[float]]:
    """The logits of each text, in order. Texts are scored in batches of similar length
    (far less padding) and put back in their order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[list[float]] = [[] for _ in texts]
    for start in range(0, len(order), texts_per_batch):
        chunk = order[start : start + texts_per_batch]
        for i, row in zip(
            chunk, classifier.logits([texts[i] for i in chunk]).tolist(), strict=True
        ):
            out[i] = row
        progress(min(1.0, (start + texts_per_batch) / max(1, len(texts))), 0.0)
    return out


def predict(
    classifier: Classifier,
    texts: Sequence[str],
    progress: ProgressFn = no_progress,
    texts_per_batch: int = SCORING_BATCH,
) -> list[str]:
    """The predicted label of each text, in order."""
    logits = logits_in_order(classifier, texts, progress, texts_per_batch)
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
    progress: ProgressFn = no_progress,
    texts_per_batch: int = SCORING_BATCH,
) -> dict[str, float]:
    """Accuracy and macro-F1 of `classifier` on (texts, labels)."""
    return scores(labels, predict(classifier, texts, progress, texts_per_batch), classifier.labels)
