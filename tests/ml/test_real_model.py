"""The packaged base encoder and demo data, as the service uses them by default."""

from __future__ import annotations

import math

import pytest

from app.core.config import packaged_base_model
from app.ml import training
from app.ml.job_params import JobParams
from app.ml.joint import JointModel
from app.ml.modeling import Classifier, init_classifier
from app.ml.pretraining import pretrain_joint
from app.ml.training import evaluate, fine_tune
from app.store.gold_files import demo_gold


def test_demo_gold_is_deduplicated_split_and_reproducible():
    items = demo_gold(seed=13)
    assert 14_000 < len(items) < 14_638  # the airline tweets, duplicates removed
    texts = [i.text for i in items]
    assert len(set(texts)) == len(texts)
    by_split = {
        s: {i.text for i in items if i.split == s} for s in ("train", "dev", "test", "gate")
    }
    assert not (by_split["train"] & by_split["test"]) and not (by_split["dev"] & by_split["test"])
    assert 0.09 < len(by_split["test"]) / len(items) < 0.11
    assert 0.09 < len(by_split["gate"]) / len(items) < 0.11
    assert not (by_split["gate"] & (by_split["train"] | by_split["dev"] | by_split["test"]))
    assert {i.label for i in items} == {"negative", "neutral", "positive"}
    assert sum(i.label == "negative" for i in items) / len(items) > 0.55  # as documented: ~63%
    assert [(i.text, i.split) for i in demo_gold(seed=13)[:50]] == [
        (i.text, i.split) for i in items[:50]
    ]
    assert [i.text for i in demo_gold(seed=14)[:50]] != texts[:50]


@pytest.mark.slow
def test_joint_step_and_fine_tune_on_the_real_encoder(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(training, "LOG_EVERY", 1)  # a point of the loss curve per step
    base = packaged_base_model()
    items = demo_gold(seed=13)
    train = [i for i in items if i.split == "train"][:256]
    dev = [i for i in items if i.split == "dev"][:128]
    labels = ["negative", "neutral", "positive"]
    model, tokenizer = init_classifier(base, labels)
    joint = JointModel.from_classifier(model, base)
    teacher = [[2.0 if labels[k] == i.label else 0.0 for k in range(3)] for i in train]
    history = pretrain_joint(
        joint,
        tokenizer,
        [i.text for i in train[:64]],
        teacher[:64],
        # The joint objective with MLM, on the masked input, hard labels, fp32.
        JobParams.model_validate(
            {
                "pretrain": {
                    "max_steps": 2,
                    "mlm_weight": 1.0,
                    "task_input": "masked",
                    "label_mode": "hard",
                },
                "max_length": 64,
                "precision": "fp32",
            }
        ),
    )
    # The MLM head transform starts from random: the loss starts near ln(vocab size).
    assert abs(history.extra["mlm_loss"][0] - math.log(len(tokenizer))) < 2.5
    tuned = fine_tune(
        model,
        tokenizer,
        [i.text for i in train],
        [i.label for i in train],
        JobParams.model_validate(
            {
                "finetune": {"max_steps": 8, "learning_rate": 1e-4},
                "max_length": 64,
                "precision": "fp32",
            }
        ),
    )
    metrics = evaluate(
        Classifier(model, tokenizer, labels, 64), [i.text for i in dev], [i.label for i in dev]
    )
    assert metrics["n"] == 128 and 0.0 <= metrics["macro_f1"] <= 1.0
    # The loop really trains: the fresh head's loss (about ln 3) falls within eight steps.
    assert sum(tuned.loss[-3:]) / 3 < sum(tuned.loss[:3]) / 3
