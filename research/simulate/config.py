"""What a simulation runs: its sizes (`SimulateConfig`, `quick()` for the smoke run) and
its arms (`ARMS`), each a way of running the service over the same rounds of traffic."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.ml.job_params import JobParams, merged
from research.protocol import EXPERIMENT_JOB

# The smoke run's jobs: small batches and dev scored often, so that a model trained on a
# hundred-odd labels for a few dozen steps keeps a checkpoint that learned something; and
# a review plan sized to the few dozen labels of its rounds (a plan for a small gain asks
# for thousands of labels, and computing it takes longer than the smoke run itself). No
# floor of fine-tuning steps: the smoke run checks the paths, not how good a model gets.
QUICK_JOB: dict[str, Any] = {
    "batch_size": 16,
    "finetune": {"epochs": 8.0, "min_steps": 0, "eval_every": 5, "patience": 4},
    "promotion": {"min_gain": 0.2},
}


@dataclass(frozen=True)
class Arm:
    """One way of running the service round after round."""

    name: str
    description: str
    retrains: bool = True
    # Where each job's student learns from before gold fine-tuning: the serving model's
    # stored predictions, a stronger teacher's, or nothing (gold only, as many steps).
    pretraining: str = "serving"  # serving | stronger | none
    # How the round's labels that teach are chosen once the gate's reviews are given:
    # the uncertainty queue, or texts of the traffic drawn at random.
    rest_of_budget: str = "uncertainty"  # uncertainty | random

    def job_params(self) -> dict[str, Any]:
        """The arm's own job parameters (the matched steps of a gold-only job are added
        per job, from its pool: research/simulate/service.py)."""
        source = "stronger" if self.pretraining == "stronger" else "serving"
        return {"teacher.source": source}


ARMS = [
    Arm("loop", "the product: pre-training on the serving model's predictions, then gold"),
    Arm(
        "gold_only",
        "gold-only retraining for as many steps, the same gate and queues",
        pretraining="none",
    ),
    Arm(
        "gold_random",
        "gold_only, with the labels beyond the gate's reviews drawn at random from the traffic",
        pretraining="none",
        rest_of_budget="random",
    ),
    Arm("never", "never retrain: the first model serves throughout", retrains=False),
    Arm(
        "loop_teacher",
        "the loop taught by a stronger teacher fine-tuned on gold (needs --teacher)",
        pretraining="stronger",
    ),
]
ARMS_BY_NAME = {arm.name: arm for arm in ARMS}
DEFAULT_ARMS = ["loop", "gold_only", "gold_random", "never"]
# Where a stronger teacher is installed, the loop the service runs is the taught one
# (teacher.source auto picks it), and that is what the arms are compared with.
TAUGHT_ARMS = ["loop_teacher", "gold_only", "gold_random", "never"]


@dataclass
class SimulateConfig:
    """Sizes of a run; the defaults are sized for about ninety minutes on a 2-core CPU
    (docs/simulate.md says how that was estimated). `quick()` is the smoke run."""

    gold_file: Path | None = None  # None: the demo airline tweets
    base_model: Path | None = None  # None: the packaged all-MiniLM-L6-v2
    teacher: Path | None = None  # a stronger teacher's encoder folder, for loop_teacher
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    arms: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS))
    rounds: int = 3
    # A candidate whose queued disagreements are labeled out undecided waits for new
    # traffic to review for at most this many rounds (the simulation's stand-in for its
    # deadline), then is decided on what there is. After the last round's job the traffic
    # goes on for as many rounds with no job, so that the last candidates may wait too: a
    # running service has no last round.
    wait_rounds: int = 2
    initial_labels: int = 300
    round_texts: int = 1000
    budget: int = 400  # labels per round, reviews and the rest together
    test_size: int = 2000  # at most; a fifth of a small data set
    max_length: int = 128  # the service's MAX_LENGTH default
    data_seed: int = 13
    keep_stores: bool = False
    # Job parameters of every arm: the ablation's (a small labeled set is worth several
    # passes), then the command line's; an arm's own settings still win.
    job_defaults: dict[str, Any] = field(default_factory=lambda: dict(EXPERIMENT_JOB))
    job_params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick(cls, **overrides: Any) -> SimulateConfig:
        values: dict[str, Any] = {
            "seeds": [1],
            "arms": ["loop", "gold_only", "never"],
            "rounds": 2,
            "wait_rounds": 1,
            "initial_labels": 150,
            "round_texts": 120,
            "budget": 24,
            "test_size": 120,
            "max_length": 32,
            "job_defaults": QUICK_JOB,
        }
        values.update(overrides)
        return cls(**values)

    @property
    def steps(self) -> int:
        """Rounds of traffic in all: the rounds with a job, then those that only let the
        last candidates wait."""
        return self.rounds + self.wait_rounds

    def step_name(self, number: int) -> str:
        """How tables name step `number` (0: the first model)."""
        if number <= self.rounds:
            return f"round {number}"
        return f"wait {number - self.rounds}"

    def params(self, arm: Arm, seed: int) -> JobParams:
        """The job parameters the arm's jobs run with (the body `POST /jobs` takes)."""
        return JobParams.model_validate(
            merged({"seed": seed}, self.job_defaults, self.job_params, arm.job_params())
        )

    def matched_arm(self) -> str:
        """The arm whose training steps each gold-only job is given: the taught loop where
        it runs (its student takes `teacher.pool_passes` times the pre-training steps, so a
        gold-only rival matched to the plain loop would get a third of its compute), else
        the loop."""
        return "loop_teacher" if "loop_teacher" in self.arms else "loop"

    def fingerprint(self) -> str:
        """What makes one arm's record of a seed comparable with another run's: everything
        but which seeds and arms run and where the stores are kept (and the rival the
        gold-only arms are matched to)."""
        values = asdict(self)
        for name in ("seeds", "arms", "keep_stores"):
            values.pop(name)
        values["matched_arm"] = self.matched_arm()
        text = json.dumps(values, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> SimulateConfig:
        paths = ("gold_file", "base_model", "teacher")
        given: dict[str, Any] = {
            k: Path(v) if k in paths and v is not None else v for k, v in values.items()
        }
        return cls(**given)

    def validate(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS_BY_NAME]
        if unknown:
            raise ValueError(f"unknown arms {unknown}; choose from {list(ARMS_BY_NAME)}")
        if "loop_teacher" in self.arms and self.teacher is None:
            raise ValueError("the loop_teacher arm needs a stronger teacher's encoder: --teacher")
        if min(self.rounds, self.initial_labels, self.round_texts, len(self.seeds)) < 1:
            raise ValueError("rounds, initial labels, round texts and seeds must be positive")
        if self.budget < 0 or self.wait_rounds < 0:
            raise ValueError("the budget and wait rounds must not be negative")
