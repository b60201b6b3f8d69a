"""The training steps on a tiny BERT: they learn, they stop when told, they report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.ml.joint import JointModel
from app.ml.metrics import accuracy, macro_f1
from app.ml.modeling import Classifier, init_classifier
from app.ml.training import LoopConfig, PretrainConfig, evaluate, fine_tune, pretrain_joint
from tests.conftest import LABELS, synthetic_texts


def test_metrics_by_hand():
    gold = ["a", "a", "b", "c"]
    pred = ["a", "b", "b", "b"]
    assert accuracy(gold, pred) == 0.5
    # F1 = 2tp / (2tp + fp + fn): a = 2/3, b = 2/4, c = 0
    assert macro_f1(gold, pred, ["a", "b", "c"]) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


def test_total_steps():
    assert LoopConfig(epochs=2, batch_size=10).total_steps(95) == 20
    assert LoopConfig(epochs=2, batch_size=10, max_steps=3).total_steps(95) == 3
    assert LoopConfig(epochs=0.5, batch_size=10).total_steps(95) == 5
    assert LoopConfig(epochs=1, batch_size=10, max_steps=30).total_steps(95) == 30


def test_fine_tune_learns_a_learnable_task(tiny_base: Path):
    rows = synthetic_texts(300, seed=3)
    texts, labels = [t for t, _ in rows], [label for _, label in rows]
    # The new head is drawn from torch's global generator: seed it, so the outcome does not
    # depend on which tests ran before in this process.
    torch.manual_seed(0)
    model, tokenizer = init_classifier(tiny_base, LABELS)
    classifier = Classifier(model, tokenizer, LABELS, 32)
    before = evaluate(classifier, texts[:90], labels[:90])
    calls: list[float] = []
    history = fine_tune(
        model,
        tokenizer,
        texts,
        labels,
        LoopConfig(epochs=4, batch_size=16, learning_rate=2e-3, max_length=32, seed=0),
        lambda f, _loss: calls.append(f),
    )
    after = evaluate(classifier, texts[:90], labels[:90])
    assert after["accuracy"] >= 0.9 > before["accuracy"]
    assert calls[-1] == 1.0 and calls == sorted(calls)
    assert history.loss[-1] < history.loss[0]


def test_fine_tune_refuses_unknown_labels(tiny_base: Path):
    model, tokenizer = init_classifier(tiny_base, LABELS)
    with pytest.raises(ValueError, match="not in the model's label set"):
        fine_tune(model, tokenizer, ["x"], ["angry"], LoopConfig())


@pytest.mark.parametrize("soft", [False, True])
def test_pretrain_joint_records_both_losses(tiny_base: Path, soft: bool):
    rows = synthetic_texts(64, seed=4)
    model, tokenizer = init_classifier(tiny_base, LABELS)
    joint = JointModel.from_classifier(model, tiny_base)
    teacher = [[3.0 if LABELS[i] == label else 0.0 for i in range(3)] for _, label in rows]
    history = pretrain_joint(
        joint,
        tokenizer,
        [t for t, _ in rows],
        teacher,
        PretrainConfig(
            max_steps=6,
            batch_size=16,
            max_length=32,
            log_every=1,
            soft_labels=soft,
            learning_rate=1e-3,
        ),
    )
    assert len(history.loss) == 6
    assert all(v > 0 for v in history.extra["mlm_loss"])
    for total, task, mlm in zip(
        history.loss, history.extra["task_loss"], history.extra["mlm_loss"], strict=True
    ):
        assert total == pytest.approx(task + mlm, abs=1e-3)


def test_progress_callback_can_stop_training(tiny_base: Path):
    class Stop(Exception):
        pass

    def stop_at_half(fraction: float, _loss: float) -> None:
        if fraction >= 0.5:
            raise Stop

    model, tokenizer = init_classifier(tiny_base, LABELS)
    with pytest.raises(Stop):
        fine_tune(
            model,
            tokenizer,
            ["a b"] * 40,
            ["neutral"] * 40,
            LoopConfig(epochs=1, batch_size=4),
            stop_at_half,
        )
