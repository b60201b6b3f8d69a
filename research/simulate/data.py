"""The data of a simulation: a fixed test split, and for each seed the first labels and
the traffic that arrives round after round. The cut is the ablation's (research/splits.py):
deduplicated first, so no text is in two of them."""

from __future__ import annotations

import random
from dataclasses import dataclass

from app.store.gold import split_for
from research.protocol import ReproConfig
from research.simulate.config import SimulateConfig
from research.splits import Rows, draw_labeled, load_data


@dataclass(frozen=True)
class SimData:
    labels: list[str]
    test: Rows  # the same for every seed and arm; nothing trains, selects or gates on it
    rest: Rows  # what the first labels and the traffic are drawn from
    source: str


@dataclass(frozen=True)
class SeedData:
    """One seed's first labels (with the splits the store keeps them in) and its traffic,
    cut into rounds. `truth` answers every text a labeler may be asked about."""

    initial: list[tuple[str, str, str]]  # (text, label, split)
    rounds: list[Rows]
    truth: dict[str, str]


def load(config: SimulateConfig) -> SimData:
    """The data set, deduplicated, with its fixed test split cut off."""
    needed = config.initial_labels + config.steps * config.round_texts
    data = load_data(
        ReproConfig(
            gold_file=config.gold_file,
            labeled_sizes=[needed],
            dev_size=0,
            test_size=config.test_size,
            data_seed=config.data_seed,
        )
    )
    return SimData(data.labels, data.test, data.in_domain, data.source)


def for_seed(data: SimData, config: SimulateConfig, seed: int) -> SeedData:
    """The seed's first labels, class-stratified, split by the store's own stable rule
    with no test share (the simulation's test split is the fixed one), and its traffic:
    the other texts in an order of the seed's (the rounds with a job, then those in which
    the last candidates wait)."""
    initial, traffic = draw_labeled(data.rest, config.initial_labels, random.Random(seed))
    splits = [(text, label, split_for(text, test_fraction=0.0)) for text, label in initial]
    size = config.round_texts
    rounds = [traffic[i * size : (i + 1) * size] for i in range(config.steps)]
    truth = dict(data.rest)
    return SeedData(splits, rounds, truth)
