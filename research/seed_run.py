"""One seed at one labeled-set size: the teacher (the control), its logits on the pool,
and every row trained with the retraining job's own functions and scored on test and
dev, with the promotion gate against the teacher as a job would run it."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from app.ml.method import pretrain_on_predictions, student
from app.ml.modeling import Classifier, Truncation, save_classifier
from app.ml.promotion import changed_share, decide, encoder_cost
from app.ml.training import (
    ProgressFn,
    fine_tune,
    finetune_steps,
    in_bf16,
    logits_in_order,
    predict,
    pretrain_steps,
    scores,
)
from research.protocol import CONTROL, ROWS_BY_NAME, ReproConfig, Row
from research.splits import ReproData, Rows, draw_labeled
from research.stats import pool_point_name

log = logging.getLogger(__name__)

Stage = Callable[[str], ProgressFn]  # called with a stage name, returns its progress callback


class SeedRun:
    """Everything one seed at one labeled-set size trains: the teacher, its labels on the
    pool, and each row, with the predictions needed to compare rows with the teacher."""

    def __init__(
        self,
        config: ReproConfig,
        data: ReproData,
        base: Path,
        seed: int,
        labeled_size: int,
        stage: Stage,
    ) -> None:
        self.config, self.data, self.base, self.seed = config, data, base, seed
        self.base_layers = int(json.loads((base / "config.json").read_text())["num_hidden_layers"])
        self.stage = lambda name: stage(f"{labeled_size} labels · seed {seed} · {name}")
        rng = random.Random(seed)
        self.labeled, pool = draw_labeled(data.in_domain, labeled_size, rng)
        if config.pool_texts:
            pool = pool[: config.pool_texts]
        self.pool = pool
        self.out_of_domain = list(data.out_of_domain)
        rng.shuffle(self.out_of_domain)
        self.gold = ([t for t, _ in self.labeled], [lbl for _, lbl in self.labeled])
        self.dev = ([t for t, _ in data.dev], [lbl for _, lbl in data.dev])
        self.test = ([t for t, _ in data.test], [lbl for _, lbl in data.test])
        # The job parameters every row starts from.
        self.base_params = config.params(seed)
        # The step budget every row gets: one pass over the whole pool, then fine-tuning.
        self.pretrain_steps = pretrain_steps(self.base_params, len(pool))
        self.finetune_steps = finetune_steps(self.base_params, len(self.labeled))
        self.results: dict[str, dict[str, Any]] = {}
        self.predictions: dict[str, dict[str, list[str]]] = {}
        self.costs: dict[str, int] = {}
        self.teacher: Classifier | None = None
        self.logits: dict[str, list[float]] = {}

    # -- the rows ---------------------------------------------------------------------------

    def run_row(self, row: Row, pool: Rows | None = None, key: str | None = None) -> None:
        """Train and score `row` (on `pool` instead of the whole pool, for the curve)."""
        key = key or row.name
        started = time.monotonic()
        result: dict[str, Any] = {}
        if row.method is None:
            model, tokenizer, history = self._gold_only(row)
            history_dict = history.as_dict()
            result["steps"] = {"finetune": _steps_run(history_dict)}
        else:
            model, tokenizer, result = self._method(row, pool if pool is not None else self.pool)
            history_dict = result.pop("history")
            result["steps"]["finetune"] = _steps_run(history_dict)
        # Which fine-tuning step dev kept (0: the weights fine-tuning started from).
        result["selection"] = history_dict.get("selection")
        classifier = Classifier(
            model, tokenizer, self.data.labels, self.config.max_length, self._truncation
        )
        result.update(self._score(key, classifier))
        self.costs[key] = encoder_cost(model)
        result["seconds"] = round(time.monotonic() - started, 1)
        self.results[key] = result
        if row.name == CONTROL and key == CONTROL:
            self.teacher = classifier  # kept: it labels the pool
        log.info(
            "seed %s · %s: test macro-F1 %.4f, %.0f s",
            self.seed,
            key,
            result["test"]["macro_f1"],
            result["seconds"],
        )

    @property
    def _truncation(self) -> Truncation:
        return self.config.truncation or "head"

    def _gold_only(self, row: Row) -> tuple[Any, Any, Any]:
        params = self.config.params(self.seed, student_layers=row.layers(self.base_layers))
        if row.matched_steps:
            params = params.updated(
                {"finetune.max_steps": self.pretrain_steps + self.finetune_steps}
            )
        model, tokenizer = student(self.base, self.data.labels, params)
        history = fine_tune(
            model, tokenizer, *self.gold, params, self.stage(f"{row.name}: gold"), self.dev
        )
        return model, tokenizer, history

    def _method(self, row: Row, pool: Rows) -> tuple[Any, Any, dict[str, Any]]:
        assert row.method is not None
        overrides = {**row.method, "student_layers": row.layers(self.base_layers)}
        overrides["pretrain.max_steps"] = self.pretrain_steps
        overrides["finetune.max_steps"] = self.finetune_steps
        params = self.config.params(self.seed, **overrides)
        texts = [t for t, _ in pool]
        logits = self.teacher_logits(pool)
        with _start_folder(self, params.pretrain.start_from) as start:
            model, tokenizer, pre = pretrain_on_predictions(
                start, self.data.labels, texts, logits, params, self.stage(f"{row.name}: pool")
            )
        history = fine_tune(
            model, tokenizer, *self.gold, params, self.stage(f"{row.name}: gold"), self.dev
        )
        notes = pre.as_dict()
        return (
            model,
            tokenizer,
            {
                "steps": {"pretrain": self.pretrain_steps},
                "pool_used": notes["pool"],
                "pretrain_loss": [pre.loss[0], pre.loss[-1]],
                "history": history.as_dict(),
            },
        )

    # -- the teacher ------------------------------------------------------------------------

    def teacher_logits(self, pool: Rows) -> list[list[float]]:
        """The teacher's logits for each text of `pool` (computed once per text), under
        the training precision: bf16 on these CPUs, as fast as a served batch."""
        missing = [t for t, _ in pool if t not in self.logits]
        if missing:
            assert self.teacher is not None, "the control (the teacher) runs first"
            self.stage("teacher labels the pool")(0.0, 0.0)
            bf16 = in_bf16(self.base_params)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                rows = logits_in_order(self.teacher, missing, texts_per_batch=128)
            self.logits.update(zip(missing, rows, strict=True))
        return [self.logits[t] for t, _ in pool]

    def pseudo_labels(self, rows: Rows) -> list[str]:
        """The teacher's label for each text of `rows`."""
        return [
            self.data.labels[max(range(len(r)), key=r.__getitem__)]
            for r in self.teacher_logits(rows)
        ]

    def pool_stats(self) -> dict[str, Any]:
        predicted = self.pseudo_labels(self.pool)
        gold = [lbl for _, lbl in self.pool]
        return {
            "texts": len(self.pool),
            "pseudo_label_accuracy": _accuracy(predicted, gold),
            "predicted_distribution": dict(Counter(predicted)),
            "true_distribution": dict(Counter(gold)),
        }

    # -- scoring ----------------------------------------------------------------------------

    def _score(self, key: str, classifier: Classifier) -> dict[str, Any]:
        """Test and dev metrics as served (fp32); with the teacher known, the promotion
        gate against it on dev and the share of test answers that would change."""
        out: dict[str, Any] = {}
        preds: dict[str, list[str]] = {}
        for split, (texts, gold) in (("test", self.test), ("dev", self.dev)):
            preds[split] = predict(classifier, texts)
            out[split] = scores(gold, preds[split], self.data.labels)
        self.predictions[key] = preds
        teacher = self.predictions.get(CONTROL)
        if teacher is not None and key != CONTROL:
            gate = decide(
                self.dev[1],
                preds["dev"],
                teacher["dev"],
                self.data.labels,
                self.base_params.promotion,
                default_margin=0.0,
            )
            out["vs_teacher"] = {
                "dev_gain": round(gate.gain, 5),
                "dev_gain_lower95": round(gate.lower_bound, 5),
                "test_changed_share": round(changed_share(teacher["test"], preds["test"]), 5),
            }
        return out


def _accuracy(predicted: list[str], gold: list[str]) -> float:
    return round(sum(p == g for p, g in zip(predicted, gold, strict=True)) / max(1, len(gold)), 5)


def _steps_run(history: dict[str, Any]) -> int:
    selection = history.get("selection")
    if isinstance(selection, dict) and selection.get("steps"):
        return int(selection["steps"][-1])
    steps = history.get("step") or [0]
    return int(steps[-1]) + 1


@contextlib.contextmanager
def _start_folder(run: SeedRun, start_from: str) -> Iterator[Path]:
    """The folder a student starts from: the base encoder, or (start_from=active) the
    teacher saved to a temporary folder, as the job starts from the serving model."""
    if start_from != "active":
        yield run.base
        return
    assert run.teacher is not None
    with tempfile.TemporaryDirectory(prefix="pfp-teacher-") as tmp:
        save_classifier(run.teacher.model, run.teacher.tokenizer, Path(tmp))
        yield Path(tmp)


def run_seed(
    config: ReproConfig,
    data: ReproData,
    base: Path,
    seed: int,
    labeled_size: int,
    rows: list[str],
    curve: bool,
    stage: Stage,
) -> dict[str, Any]:
    """Every row (and, with `curve`, the pool-size curve) for one seed and size."""
    run = SeedRun(config, data, base, seed, labeled_size, stage)
    run.run_row(ROWS_BY_NAME[CONTROL])
    out: dict[str, Any] = {
        "seed": seed,
        "labeled": len(run.labeled),
        "labeled_distribution": dict(Counter(lbl for _, lbl in run.labeled)),
        "steps_budget": run.pretrain_steps + run.finetune_steps,
        "pool": run.pool_stats(),
    }
    for name in rows:
        if name != CONTROL:
            run.run_row(ROWS_BY_NAME[name])
    if curve:
        curve_row = ROWS_BY_NAME[config.curve_row]
        if curve_row.control not in run.results:
            run.run_row(ROWS_BY_NAME[curve_row.control])
        out["pool_curve"] = {}
        for in_domain, out_of_domain in config.pool_curve:
            if out_of_domain > len(run.out_of_domain) or in_domain > len(run.pool):
                continue
            point = pool_point_name(in_domain, out_of_domain)
            mixed = run.pool[:in_domain] + run.out_of_domain[:out_of_domain]
            run.run_row(curve_row, mixed, key=f"{curve_row.name}@{point}")
            out["pool_curve"][point] = run.results.pop(f"{curve_row.name}@{point}")
        if any("ood" in p for p in out["pool_curve"]):
            ood = run.out_of_domain[: config.pool_curve[-1][1]]
            out["pool"]["pseudo_label_accuracy_out_of_domain"] = _accuracy(
                run.pseudo_labels(ood), [lbl for _, lbl in ood]
            )
    out["rows"] = run.results
    out["encoder_cost"] = run.costs
    return out
