"""Training throughput of the joint step against a naive one, on the CPU or a GPU.

Imports only torch, transformers and app.ml, so `bench.gpu` can run it on a machine that
has no service dependencies installed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[object]:
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def measure_training(
    base: Path,
    texts: list[str],
    steps: int,
    batch: int,
    max_length: int,
    device: torch.device | None = None,
    bf16: bool | None = None,
) -> dict[str, Any]:
    """Tokens/s of our joint step against a naive one (full-vocabulary MLM logits from a
    separate masked-LM forward, plus a separate classification forward) on the same batches.

    `bf16`: also time both steps under bf16 autocast (default: on a GPU, or on a CPU with
    native bf16); speed-ups are against the naive step in the same precision, and
    `speedup_bf16` against the naive fp32 step.
    """
    from transformers import AutoModelForMaskedLM

    from app.ml.job_params import PretrainParams
    from app.ml.joint import JointModel, mask_tokens
    from app.ml.modeling import init_classifier, load_pretrained
    from app.ml.training import cpu_has_fast_bf16

    device = device or torch.device("cpu")
    if bf16 is None:
        bf16 = device.type == "cuda" or cpu_has_fast_bf16()
    labels = ["negative", "neutral", "positive"]
    model, tokenizer = init_classifier(base, labels)
    joint = JointModel.from_classifier(model, base).to(device).train()
    # What the naive step computes: the masked-LM loss plus the hard task loss, both on the
    # masked input, unweighted.
    objective = PretrainParams(mlm_weight=1.0, label_mode="hard", task_input="masked")
    naive_mlm = load_pretrained(AutoModelForMaskedLM, base).to(device).train()
    naive_clf, _ = init_classifier(base, labels)
    naive_clf.to(device).train()  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    batches: list[tuple[Any, ...]] = []
    for i in range(steps):
        chunk = [texts[(i * batch + k) % len(texts)] for k in range(batch)]
        enc = tokenizer(
            chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        special = torch.tensor(
            [
                tokenizer.get_special_tokens_mask(r, already_has_special_tokens=True)
                for r in enc["input_ids"].tolist()
            ]
        ).bool() | (enc["attention_mask"] == 0)
        masked, mlm_labels = mask_tokens(enc["input_ids"], special, tokenizer, 0.15, gen)
        hard = torch.randint(0, 3, (batch,), generator=gen)
        tokens = int(enc["attention_mask"].sum())
        batches.append(
            tuple(t.to(device) for t in (masked, enc["attention_mask"], mlm_labels, hard))
            + (tokens,)
        )

    def ours(b: tuple, bf16: bool = False) -> None:
        masked, attn, mlm_labels, hard, _ = b
        with _autocast(device, bf16):
            loss = joint(masked, attn, mlm_labels, objective, hard_labels=hard).loss
        loss.backward()
        joint.zero_grad(set_to_none=True)

    def naive(b: tuple, bf16: bool = False) -> None:
        masked, attn, mlm_labels, hard, _ = b
        with _autocast(device, bf16):
            mlm_loss = naive_mlm(input_ids=masked, attention_mask=attn, labels=mlm_labels).loss
            task = F.cross_entropy(naive_clf(input_ids=masked, attention_mask=attn).logits, hard)
        (mlm_loss + task).backward()
        naive_mlm.zero_grad(set_to_none=True)
        naive_clf.zero_grad(set_to_none=True)

    steps_to_time: list[tuple[str, Callable[[tuple], None]]] = [("naive", naive), ("ours", ours)]
    if bf16:
        steps_to_time += [
            ("naive_bf16", lambda b: naive(b, bf16=True)),
            ("ours_bf16", lambda b: ours(b, bf16=True)),
        ]
    result: dict[str, Any] = {"device": str(device)}
    tokens = sum(int(b[4]) for b in batches)
    for name, step in steps_to_time:
        # Warm-up: on a GPU every batch once (each padded length is a new shape for the
        # kernels to pick), on the CPU the first one.
        for b in batches if device.type == "cuda" else batches[:1]:
            step(b)
        _sync(device)
        start = time.perf_counter()
        for b in batches:
            step(b)
        _sync(device)
        elapsed = time.perf_counter() - start
        result[name] = {
            "tokens_per_s": round(tokens / elapsed, 1),
            "s_per_step": round(elapsed / steps, 4),
        }
    result["speedup"] = round(result["ours"]["tokens_per_s"] / result["naive"]["tokens_per_s"], 2)
    if bf16:
        naive_bf16 = result["naive_bf16"]["tokens_per_s"]
        result["speedup_in_bf16"] = round(result["ours_bf16"]["tokens_per_s"] / naive_bf16, 2)
        result["speedup_bf16"] = round(
            result["ours_bf16"]["tokens_per_s"] / result["naive"]["tokens_per_s"], 2
        )
    result["batch"] = batch
    result["steps"] = steps
    return result
