"""The training steps on a tiny BERT: they learn, they stop when told, they report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.ml import training
from app.ml.job_params import JobParams
from app.ml.joint import JointModel
from app.ml.metrics import accuracy, macro_f1
from app.ml.modeling import Classifier, init_classifier
from app.ml.pretraining import pretrain_joint
from app.ml.training import evaluate, fine_tune, finetune_steps
from tests.conftest import LABELS, synthetic_texts


def job(**values) -> JobParams:
    """A job's parameters (flat, dotted or nested names), at a length for the tiny model, in
    fp32 so that a test sees the same numbers on every CPU (auto picks bf16 on some)."""
    return JobParams.model_validate({"max_length": 32, "precision": "fp32", **values})


@pytest.fixture
def every_step_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "LOG_EVERY", 1)


def test_metrics_by_hand():
    gold = ["a", "a", "b", "c"]
    pred = ["a", "b", "b", "b"]
    assert accuracy(gold, pred) == 0.5
    # F1 = 2tp / (2tp + fp + fn): a = 2/3, b = 2/4, c = 0
    assert macro_f1(gold, pred, ["a", "b", "c"]) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


def test_total_steps():
    no_floor = {"finetune_min_steps": 0, "batch_size": 10}
    assert finetune_steps(job(finetune_epochs=2, **no_floor), 95) == 20
    assert finetune_steps(job(finetune_epochs=2, finetune_max_steps=3, **no_floor), 95) == 3
    assert finetune_steps(job(finetune_epochs=0.5, **no_floor), 95) == 5
    assert finetune_steps(job(finetune_epochs=1, finetune_max_steps=30, **no_floor), 95) == 30


def test_a_few_labels_still_get_the_floor_of_fine_tuning_steps_but_max_steps_is_exact():
    # 300 labels at batch 32 are 10 steps an epoch: the floor lifts them; many labels
    # are above it and unchanged; an exact max_steps is taken as given.
    assert finetune_steps(job(finetune_epochs=1), 300) == JobParams().finetune.min_steps
    assert finetune_steps(job(finetune_epochs=1), 10_080) == 315
    assert finetune_steps(job(finetune_epochs=1, finetune_max_steps=7), 300) == 7


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
        job(finetune_epochs=4, batch_size=16, finetune_learning_rate=2e-3, seed=0),
        lambda f, _loss: calls.append(f),
    )
    after = evaluate(classifier, texts[:90], labels[:90])
    assert after["accuracy"] >= 0.9 > before["accuracy"]
    assert calls[-1] == 1.0 and calls == sorted(calls)
    assert history.loss[-1] < history.loss[0]


def test_fine_tune_refuses_unknown_labels(tiny_base: Path):
    model, tokenizer = init_classifier(tiny_base, LABELS)
    with pytest.raises(ValueError, match="not in the model's label set"):
        fine_tune(model, tokenizer, ["x"], ["angry"], job())


@pytest.mark.parametrize("soft", [False, True])
def test_pretrain_joint_records_both_losses(tiny_base: Path, soft: bool, every_step_logged):
    rows = synthetic_texts(64, seed=4)
    model, tokenizer = init_classifier(tiny_base, LABELS)
    joint = JointModel.from_classifier(model, tiny_base)
    teacher = [[3.0 if LABELS[i] == label else 0.0 for i in range(3)] for _, label in rows]
    history = pretrain_joint(
        joint,
        tokenizer,
        [t for t, _ in rows],
        teacher,
        job(
            pretrain_max_steps=6,
            batch_size=16,
            mlm_weight=1.0,
            task_input="masked",
            label_mode="soft" if soft else "hard",
            pretrain_learning_rate=1e-3,
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
            job(batch_size=4),
            stop_at_half,
        )


def _rows(n: int, seed: int) -> tuple[list[str], list[str]]:
    rows = synthetic_texts(n, seed=seed)
    return [t for t, _ in rows], [label for _, label in rows]


def test_fine_tune_ends_on_its_best_dev_checkpoint(tiny_base: Path):
    texts, labels = _rows(240, 5)
    dev = _rows(60, 6)
    torch.manual_seed(0)
    model, tokenizer = init_classifier(tiny_base, LABELS)
    config = job(
        finetune={"max_steps": 40, "learning_rate": 3e-3, "eval_every": 8, "patience": 0},
        batch_size=16,
    )
    history = fine_tune(model, tokenizer, texts, labels, config, dev=dev)
    selection = history.as_dict()["selection"]
    assert isinstance(selection, dict)
    assert selection["steps"] == [0, 8, 16, 24, 32, 40]
    best = max(selection["macro_f1"])
    assert selection["best_step"] == selection["steps"][selection["macro_f1"].index(best)]
    # The model it returns is that checkpoint: scoring dev again gives the best score.
    after = evaluate(Classifier(model, tokenizer, LABELS, 32), *dev)
    assert after["macro_f1"] == pytest.approx(best, abs=1e-4)


def test_fine_tuning_that_only_hurts_keeps_the_weights_it_started_from(tiny_base: Path):
    """A student that already learned the task (here: from gold, standing in for a
    teacher's predictions) is not made worse by a few gold steps that derail it."""
    texts, labels = _rows(240, 5)
    dev = _rows(60, 6)
    torch.manual_seed(0)
    model, tokenizer = init_classifier(tiny_base, LABELS)
    learn = job(finetune={"max_steps": 60, "learning_rate": 3e-3, "eval_every": 0}, batch_size=16)
    fine_tune(model, tokenizer, texts, labels, learn)
    before = evaluate(Classifier(model, tokenizer, LABELS, 32), *dev)["macro_f1"]
    start = {k: v.clone() for k, v in model.state_dict().items()}
    # A rate far too high on labels that contradict the task: every step makes it worse.
    wrong = [LABELS[(LABELS.index(label) + 1) % 3] for label in labels]
    derail = job(
        finetune={"max_steps": 20, "learning_rate": 5e-2, "eval_every": 10, "patience": 0},
        batch_size=16,
    )
    history = fine_tune(model, tokenizer, texts, wrong, derail, dev=dev)
    selection = history.as_dict()["selection"]
    assert isinstance(selection, dict) and selection["steps"] == [0, 10, 20]
    assert selection["best_step"] == 0 and selection["macro_f1"][0] == pytest.approx(before)
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())


def test_fine_tune_stops_after_its_patience(tiny_base: Path):
    texts, labels = _rows(120, 5)
    model, tokenizer = init_classifier(tiny_base, LABELS)
    # A zero learning rate never improves on the scoring of the start: patience 2 ends the
    # run at the third scoring, long before its 100 steps.
    # (A job's rate is above zero: this one is set past validation.)
    config = job(finetune={"max_steps": 100, "eval_every": 5, "patience": 2}, batch_size=8)
    config.finetune.learning_rate = 0.0
    calls: list[float] = []
    history = fine_tune(
        model, tokenizer, texts, labels, config, lambda f, _l: calls.append(f), dev=_rows(30, 6)
    )
    selection = history.as_dict()["selection"]
    assert isinstance(selection, dict)
    assert selection["steps"] == [0, 5, 10] and selection["stopped_early"] is True
    assert selection["best_step"] == 0
    assert calls[-1] == 1.0  # progress still ends at 100%


def test_a_student_keeps_evenly_spaced_layers_and_loads_as_a_plain_model(
    tiny_base: Path, tmp_path: Path
):
    from transformers import AutoModelForSequenceClassification

    from app.ml.modeling import encoder_layers, save_classifier

    full, _ = init_classifier(tiny_base, LABELS)
    torch.manual_seed(0)
    student, tokenizer = init_classifier(tiny_base, LABELS, layers=1)
    assert len(encoder_layers(student)) == 1 and student.config.num_hidden_layers == 1
    kept = encoder_layers(student)[0].state_dict()
    for name, value in encoder_layers(full)[0].state_dict().items():
        assert torch.equal(kept[name], value), name  # layer 0 of the start model
    save_classifier(student, tokenizer, tmp_path / "student")
    loaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "student"))
    assert loaded.config.num_hidden_layers == 1
    with pytest.raises(ValueError, match="only 2 layers"):
        init_classifier(tiny_base, LABELS, layers=5)


def test_head_tail_truncation_keeps_both_ends(tiny_base: Path):
    from app.ml.modeling import encode_texts

    _, tokenizer = init_classifier(tiny_base, LABELS)
    text = "opening words " + "filler " * 400 + "the verdict at the end"
    head = encode_texts(tokenizer, [text], 32, "head")["input_ids"][0]
    both = encode_texts(tokenizer, [text], 32, "head_tail")
    ids = both["input_ids"][0]
    assert len(ids) == len(head) == 32 == len(both["attention_mask"][0])
    assert ids[:4] == head[:4]  # [CLS] opening words ...
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded.startswith("opening words") and decoded.endswith("the verdict at the end")
    assert "verdict" not in tokenizer.decode(head)
    # Short texts are the same either way.
    short = encode_texts(tokenizer, ["@united thanks"], 32, "head_tail")["input_ids"]
    assert short == encode_texts(tokenizer, ["@united thanks"], 32, "head")["input_ids"]


def test_token_deletion_keeps_special_tokens_and_some_text():
    import random

    from app.ml.pretraining import delete_tokens

    special = {101, 102}
    rng = random.Random(0)
    ids = [101, 5, 6, 7, 8, 9, 102]
    noised = [delete_tokens(ids, 0.3, special, rng) for _ in range(200)]
    assert all(n[0] == 101 and n[-1] == 102 and len(n) >= 3 for n in noised)
    assert any(len(n) < len(ids) for n in noised)
    assert delete_tokens(ids, 1.0, special, rng)[1] in {5, 6, 7, 8, 9}  # never empty


def test_distillation_without_mlm_needs_no_head_and_learns_the_teacher(
    tiny_base: Path, every_step_logged
):
    texts, labels = _rows(150, 7)
    teacher = [[4.0 if LABELS[i] == label else 0.0 for i in range(3)] for label in labels]
    torch.manual_seed(0)
    model, tokenizer = init_classifier(tiny_base, LABELS)
    history = pretrain_joint(
        JointModel(model),
        tokenizer,
        texts,
        teacher,
        job(
            pretrain_max_steps=80,
            batch_size=16,
            label_mode="soft",
            mlm_weight=0.0,
            task_input="clean",
            token_deletion=0.1,
            pretrain_learning_rate=3e-3,
        ),
    )
    assert history.extra["mlm_loss"] == [0.0] * 80
    assert sum(history.loss[-10:]) < sum(history.loss[:10]) / 2
    agreement = evaluate(Classifier(model, tokenizer, LABELS, 32), texts, labels)["accuracy"]
    assert agreement > 0.9


def test_mlm_warm_up_trains_the_head_alone(tiny_base: Path):
    from app.ml.pretraining import _warm_up_mlm_head

    model, tokenizer = init_classifier(tiny_base, LABELS)
    joint = JointModel.from_classifier(model, tiny_base)
    encoder_before = {k: v.clone() for k, v in model.state_dict().items()}
    head_before = {k: v.clone() for k, v in joint.mlm_head.state_dict().items()}
    ids = tokenizer([t for t, _ in synthetic_texts(64, 2)])["input_ids"]
    config = job(batch_size=16, mlm_weight=1.0, mlm_warmup_steps=5)
    losses = _warm_up_mlm_head(joint, tokenizer, ids, config, torch.Generator().manual_seed(0))
    assert len(losses) == 5
    for name, value in model.state_dict().items():
        assert torch.equal(value, encoder_before[name]), name
    changed = [
        n for n, v in joint.mlm_head.state_dict().items() if not torch.equal(v, head_before[n])
    ]
    assert changed and "predictions.transform.dense.weight" in changed
    assert all(p.requires_grad for p in model.parameters())  # unfrozen afterwards


def test_balanced_top_k_keeps_the_most_confident_of_each_class():
    from app.ml.pool import balanced_top_k

    logits = [[5, 0, 0], [1, 0, 0], [0, 3, 0], [0, 0, 2], [0, 0, 9], [3, 0, 0]]
    assert balanced_top_k(logits, 2) == [0, 2, 3, 4, 5]  # class 0: rows 0 and 5, not 1
    assert balanced_top_k(logits, 0) == list(range(6))
