"""The joint objective: MLM on masked positions only + task loss, one encoder pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from app.ml.job_params import PretrainParams
from app.ml.joint import JointModel, mask_tokens
from app.ml.modeling import init_classifier

LABELS = ["negative", "neutral", "positive"]
# The loss takes its mix from a job's `pretrain` section, whole: these spell out the mixes
# the tests need (the job's default has no MLM).
TASK_ONLY = PretrainParams(mlm_weight=0.0)
WITH_MLM = PretrainParams(mlm_weight=1.0)
MLM_ONLY = PretrainParams(mlm_weight=1.0, task_weight=0.0)


@pytest.fixture
def joint_and_batch(tiny_base: Path):
    model, tokenizer = init_classifier(tiny_base, LABELS)
    joint = JointModel.from_classifier(model, tiny_base).eval()
    texts = ["@united lost my bag again", "thanks for the smooth flight", "what gate is it"]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    special = torch.tensor(
        [
            tokenizer.get_special_tokens_mask(r, already_has_special_tokens=True)
            for r in enc["input_ids"].tolist()
        ]
    ) | (enc["attention_mask"] == 0)
    masked, mlm_labels = mask_tokens(
        enc["input_ids"], special, tokenizer, 0.3, torch.Generator().manual_seed(0)
    )
    return joint, tokenizer, enc, masked, mlm_labels


def test_loss_is_task_loss_when_mlm_weight_is_zero(joint_and_batch):
    joint, _tok, enc, masked, mlm_labels = joint_and_batch
    hard = torch.tensor([0, 2, 1])
    out = joint(masked, enc["attention_mask"], mlm_labels, TASK_ONLY, hard_labels=hard)
    logits = joint.classifier(input_ids=masked, attention_mask=enc["attention_mask"]).logits
    assert torch.allclose(out.loss, F.cross_entropy(logits, hard))
    assert out.mlm_loss.item() == 0.0


def test_sum_is_task_plus_weighted_mlm(joint_and_batch):
    joint, _tok, enc, masked, mlm_labels = joint_and_batch
    hard = torch.tensor([0, 2, 1])
    half = PretrainParams(mlm_weight=0.5)
    out = joint(masked, enc["attention_mask"], mlm_labels, half, hard_labels=hard)
    assert out.mlm_loss.item() > 0
    assert torch.allclose(out.loss, out.task_loss + 0.5 * out.mlm_loss)


def test_mlm_head_scores_only_masked_positions(joint_and_batch):
    joint, _tok, enc, masked, mlm_labels = joint_and_batch
    seen: list[int] = []
    joint.mlm_head.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].shape[0]))
    out = joint(
        masked, enc["attention_mask"], mlm_labels, WITH_MLM, hard_labels=torch.tensor([0, 1, 2])
    )
    n_masked = int((mlm_labels != -100).sum())
    assert 0 < n_masked < mlm_labels.numel()
    assert seen == [n_masked]
    # Same value as the full-vocabulary computation restricted to the masked positions.
    hidden = joint.classifier(
        input_ids=masked, attention_mask=enc["attention_mask"], output_hidden_states=True
    ).hidden_states[-1]
    full = joint.mlm_head(hidden)
    expected = F.cross_entropy(
        full.view(-1, full.shape[-1]), mlm_labels.view(-1), ignore_index=-100
    )
    assert torch.allclose(out.mlm_loss, expected, atol=1e-5)


def test_soft_labels_are_kl_to_teacher_logits(joint_and_batch):
    joint, _tok, enc, masked, mlm_labels = joint_and_batch
    student = joint.classifier(input_ids=masked, attention_mask=enc["attention_mask"]).logits
    same = joint(
        masked, enc["attention_mask"], mlm_labels, TASK_ONLY, teacher_logits=student.detach()
    )
    assert same.task_loss.item() == pytest.approx(0.0, abs=1e-6)
    teacher = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 4.0], [0.0, 4.0, 0.0]])
    out = joint(masked, enc["attention_mask"], mlm_labels, TASK_ONLY, teacher_logits=teacher)
    expected = F.kl_div(
        F.log_softmax(student, -1),
        F.log_softmax(teacher, -1),
        log_target=True,
        reduction="batchmean",
    )
    assert torch.allclose(out.task_loss, expected, atol=1e-6)


def test_hard_and_soft_are_exclusive(joint_and_batch):
    joint, _tok, enc, masked, mlm_labels = joint_and_batch
    with pytest.raises(ValueError, match="exactly one"):
        joint(masked, enc["attention_mask"], mlm_labels, WITH_MLM)


def test_clean_input_variant_reads_unmasked_text(joint_and_batch):
    joint, _tok, enc, masked, mlm_labels = joint_and_batch
    hard = torch.tensor([0, 2, 1])
    out = joint(
        masked,
        enc["attention_mask"],
        mlm_labels,
        TASK_ONLY,
        hard_labels=hard,
        clean_input_ids=enc["input_ids"],
    )
    clean_logits = joint.classifier(
        input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
    ).logits
    assert torch.allclose(out.task_loss, F.cross_entropy(clean_logits, hard))


def test_decoder_is_tied_to_classifier_embeddings(joint_and_batch):
    joint = joint_and_batch[0]
    emb = joint.classifier.get_input_embeddings().weight
    decoder = [m for m in joint.mlm_head.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert decoder.weight.data_ptr() == emb.data_ptr()


def test_masking_never_touches_special_tokens_or_padding(tiny_base: Path):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base))
    enc = tokenizer(
        ["a b c d e f g h i j k l m n o p"] * 50 + ["short"], padding=True, return_tensors="pt"
    )
    special = torch.tensor(
        [
            tokenizer.get_special_tokens_mask(r, already_has_special_tokens=True)
            for r in enc["input_ids"].tolist()
        ]
    ).bool() | (enc["attention_mask"] == 0)
    masked, labels = mask_tokens(
        enc["input_ids"], special, tokenizer, 0.15, torch.Generator().manual_seed(1)
    )
    chosen = labels != -100
    assert not (chosen & special).any()
    assert torch.equal(masked[special], enc["input_ids"][special])
    share = chosen.sum().item() / (~special).sum().item()
    assert 0.10 < share < 0.20
    assert torch.equal(labels[chosen], enc["input_ids"][chosen])
    # Of the chosen tokens about 80% read [MASK].
    mask_share = (masked[chosen] == tokenizer.mask_token_id).float().mean().item()
    assert 0.7 < mask_share < 0.9


def test_task_weight_zero_is_masked_lm_only(joint_and_batch):
    # The TAPT row of the ablation: no labels at all, the loss is the MLM loss alone.
    joint, _tok, enc, masked, mlm_labels = joint_and_batch
    out = joint(masked, enc["attention_mask"], mlm_labels, MLM_ONLY)
    with_task = joint(
        masked, enc["attention_mask"], mlm_labels, WITH_MLM, hard_labels=torch.tensor([0, 2, 1])
    )
    assert out.task_loss.item() == 0.0
    assert torch.allclose(out.loss, out.mlm_loss)
    assert torch.allclose(out.mlm_loss, with_task.mlm_loss)
    with pytest.raises(ValueError, match="exactly one"):
        joint(masked, enc["attention_mask"], mlm_labels, WITH_MLM)
