"""The pre-training objective of the method: the task loss on pseudo-labels, optionally
plus the masked-LM loss.

With MLM, both losses come from ONE encoder pass over the (masked) input: the classifier's
logits give the task loss, and its last hidden state at the masked positions only goes
through the MLM head. Scoring only masked positions avoids the [tokens x vocab] logits
over every position, which dominate a naive step on a CPU (docs/ablation.md). Without MLM
(the paper's final method, and our default) there is no head and no masking at all.

The mix (the weights, the temperature) is the job's `pretrain` section
(app/ml/job_params.py), passed whole: the loss has no defaults of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForMaskedLM, PreTrainedModel, PreTrainedTokenizerBase

from app.ml.job_params import PretrainParams
from app.ml.modeling import load_pretrained


def mask_tokens(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    tokenizer: PreTrainedTokenizerBase,
    mlm_probability: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: choose `mlm_probability` of the real tokens; of those 80% become
    [MASK], 10% a random token, 10% stay. Returns (masked ids, labels with -100 elsewhere).
    """
    labels = input_ids.clone()
    probs = torch.full(labels.shape, mlm_probability)
    probs.masked_fill_(special_tokens_mask.bool(), 0.0)
    chosen = torch.bernoulli(probs, generator=generator).bool()
    labels[~chosen] = -100
    masked = input_ids.clone()
    replace = torch.bernoulli(torch.full(labels.shape, 0.8), generator=generator).bool() & chosen
    masked[replace] = tokenizer.mask_token_id
    randomize = (
        torch.bernoulli(torch.full(labels.shape, 0.5), generator=generator).bool()
        & chosen
        & ~replace
    )
    random_ids = torch.randint(len(tokenizer), labels.shape, generator=generator)
    masked[randomize] = random_ids[randomize]
    return masked, labels


def mlm_head_of(masked_lm: PreTrainedModel) -> nn.Module:
    """The prediction head of a masked-LM model (BERT's `cls`, RoBERTa's `lm_head`)."""
    for name in ("cls", "lm_head"):
        head = getattr(masked_lm, name, None)
        if isinstance(head, nn.Module):
            return head
    raise ValueError(
        f"{type(masked_lm).__name__}: joint pre-training supports BERT- and RoBERTa-style "
        "masked-LM heads (attribute 'cls' or 'lm_head')"
    )


@dataclass
class JointOutput:
    loss: torch.Tensor
    task_loss: torch.Tensor
    mlm_loss: torch.Tensor


class JointModel(nn.Module):
    """A sequence classifier plus an MLM head that shares its encoder and word embeddings."""

    def __init__(self, classifier: PreTrainedModel, mlm_head: nn.Module | None = None) -> None:
        super().__init__()
        self.classifier = classifier
        self.mlm_head = mlm_head

    @classmethod
    def from_classifier(cls, classifier: PreTrainedModel, mlm_source: Path) -> JointModel:
        """Take the MLM head from `mlm_source` (newly initialised where the checkpoint has
        none, as with all-MiniLM-L6-v2) and tie its decoder to the classifier's embeddings."""
        masked_lm = load_pretrained(AutoModelForMaskedLM, mlm_source)
        head = mlm_head_of(masked_lm)
        decoder = masked_lm.get_output_embeddings()
        if decoder is None:
            raise ValueError(f"{mlm_source}: masked-LM model has no output embeddings")
        # Tie: the decoder predicts tokens with the very embeddings the encoder trains.
        decoder.weight = classifier.get_input_embeddings().weight
        return cls(classifier, head)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mlm_labels: torch.Tensor,
        objective: PretrainParams,
        hard_labels: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
        clean_input_ids: torch.Tensor | None = None,
    ) -> JointOutput:
        """loss = task_weight * task loss + mlm_weight * MLM loss, from one encoder pass,
        with the weights and the temperature of `objective`.

        Task loss: cross-entropy to `hard_labels`, or KL(teacher || student) on the softmax of
        `teacher_logits / temperature` (soft labels). Exactly one of the two is given.
        With `clean_input_ids` the task loss reads the unmasked text in a second pass (the
        variant the paper's ablation favoured); otherwise it reads the masked input.
        task_weight 0 is plain masked-LM pre-training (the TAPT baseline of the ablation).
        """
        mlm_weight, task_weight = objective.mlm_weight, objective.task_weight
        temperature = objective.temperature
        if task_weight != 0.0 and (hard_labels is None) == (teacher_logits is None):
            raise ValueError("give exactly one of hard_labels and teacher_logits")
        selected = mlm_labels != -100
        use_mlm = mlm_weight != 0.0 and bool(selected.any())
        if use_mlm and self.mlm_head is None:
            raise ValueError("mlm_weight > 0 needs a JointModel built with an MLM head")
        out = self.classifier(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=use_mlm
        )
        task_logits = out.logits
        if clean_input_ids is not None and task_weight != 0.0:
            task_logits = self.classifier(
                input_ids=clean_input_ids, attention_mask=attention_mask
            ).logits
        if task_weight == 0.0:
            task_loss = torch.zeros((), device=input_ids.device)
        elif hard_labels is not None:
            task_loss = F.cross_entropy(task_logits, hard_labels)
        else:
            assert teacher_logits is not None
            student = F.log_softmax(task_logits / temperature, dim=-1)
            teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
            task_loss = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
            task_loss = task_loss * temperature**2
        if not use_mlm:
            mlm_loss = torch.zeros((), device=input_ids.device)
        else:
            assert self.mlm_head is not None
            hidden = out.hidden_states[-1][selected]
            mlm_logits = self.mlm_head(hidden)
            mlm_loss = F.cross_entropy(mlm_logits, mlm_labels[selected])
        return JointOutput(
            loss=task_weight * task_loss + mlm_weight * mlm_loss,
            task_loss=task_loss,
            mlm_loss=mlm_loss,
        )
