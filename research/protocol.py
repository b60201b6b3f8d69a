"""The experiment's design (`make repro`, `python -m research`): its rows and its sizes.

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
Splits are cut after deduplication, so no text is in two of them (research/splits.py);
test and dev are fixed for all seeds, and each seed draws its own class-stratified
labeled set. Each seed's training is research/seed_run.py; the statistics
research/stats.py; the tables and the plot research/report.py and research/plots.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.ml.job_params import JobParams, merged
from app.ml.modeling import Truncation

CONTROL = "control"


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
KD = {
    "pretrain.label_mode": "soft",
    "pretrain.mlm_weight": 0.0,
    "pretrain.task_input": "clean",
    "pretrain.start_from": "base",
}
NOISE = {"pretrain.token_deletion": 0.1}  # plus the model's own dropout, on in training
TOP_K = {"pool.top_k_share": 0.5}  # Du et al. 2020: balanced, the teacher's surest half

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
        method=KD | {"pretrain.mlm_weight": 0.1, "pretrain.mlm_warmup_steps": 100},
    ),
    Row(
        "kd_hard",
        "kd with hard labels (cross-entropy to the teacher's argmax)",
        method=KD | {"pretrain.label_mode": "hard"},
    ),
    Row(
        "kd_from_teacher_noise",
        "kd_noise, the student starting from the teacher",
        method=KD | NOISE | {"pretrain.start_from": "active"},
    ),
]
ROWS_BY_NAME = {row.name: row for row in ROWS}
# The default table is sized to run in an evening on a 2-core CPU (docs/ablation.md): the
# variants run on the half-depth student, which trains faster than the full model.
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

# Where every row's job parameters depart from a job's defaults (app/ml/job_params.py):
# a small labeled set is worth several passes (`make simulate` runs its jobs so too).
EXPERIMENT_JOB: dict[str, Any] = {"finetune": {"epochs": 5.0}}
# The studies' rows take exactly that many passes, with no floor on the steps, so that a
# row's budget is what the tables in docs/ say it was.
STUDY_JOB: dict[str, Any] = merged(EXPERIMENT_JOB, {"finetune": {"min_steps": 0}})
# The smoke run: fewer passes, and dev scored often enough to pick a checkpoint at all.
QUICK_JOB: dict[str, Any] = {
    "finetune": {"epochs": 2.0, "min_steps": 0, "eval_every": 5, "patience": 2}
}


@dataclass
class ReproConfig:
    """Sizes of a run; the defaults are the table of docs/ablation.md. `quick()` is the
    smoke run. The training itself is a job's (`params`)."""

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
    # points without out-of-domain data to draw from are left out. Every pool of the curve
    # gets the steps of one pass over the whole pool.
    pool_curve: list[tuple[int, int]] = field(default_factory=lambda: [(1000, 0), (5000, 5000)])
    curve_row: str = "kd_half"
    max_length: int = 0  # 0: the 95th percentile of the texts' tokens (32..256)
    truncation: Truncation | None = None  # None: head_tail if >10% of texts are cut
    data_seed: int = 13
    # Job parameters of every row: the studies' (STUDY_JOB), then the command
    # line's (`--param`); a row's own settings still win.
    job_defaults: dict[str, Any] = field(default_factory=lambda: dict(STUDY_JOB))
    job_params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick(cls, **overrides: Any) -> ReproConfig:
        values: dict[str, Any] = {
            "labeled_sizes": [60],
            "dev_size": 100,
            "test_size": 200,
            "seeds": [1, 2],
            "pool_texts": 300,
            "pool_curve": [(100, 0), (100, 100)],
            "job_defaults": QUICK_JOB,
        }
        values.update(overrides)
        return cls(**values)

    def params(self, seed: int, **overrides: Any) -> JobParams:
        """The job parameters a row trains with (the same object `POST /jobs` takes)."""
        shared = {
            "max_length": self.max_length,
            "truncation": self.truncation or "head",
            "seed": seed,
        }
        return JobParams.model_validate(
            merged(shared, self.job_defaults, self.job_params, overrides)
        )
