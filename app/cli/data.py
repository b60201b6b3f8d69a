"""`pfp import-gold`, `pfp label` and `pfp export`: gold examples in, predictions in and out."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

from app.cli import common
from app.cli.client import (
    ClientError,
)
from app.core.config import get_settings
from app.core.texts import storable

# Rows per Parquet row group: what `export` holds in memory at once.
PARQUET_ROW_GROUP = 10_000


def cmd_import_gold(args: argparse.Namespace) -> None:
    from app.store.gold_files import GoldFileError, read_gold_file

    seed = args.seed if args.seed is not None else get_settings().seed
    try:
        items = read_gold_file(Path(args.file), seed)
    except GoldFileError as exc:
        raise common.UsageError(str(exc)) from None
    if not items:
        raise common.UsageError(f"{args.file}: no gold examples in it")
    examples = [{"text": i.text, "label": i.label, "split": i.split} for i in items]
    inserted = skipped = 0
    counts: dict[str, int] = {}
    with (
        common.connect(args) as client,
        common.progress(total=len(examples), unit=" ex", desc="gold") as bar,
    ):
        for batch in common.batches(examples, args.batch_size):
            answer = client.post("/gold", {"examples": batch})
            inserted += answer["inserted"]
            skipped += answer["skipped_duplicates"]
            counts = answer["split_counts"]
            bar.update(len(batch))
    splits = ", ".join(f"{split} {n}" for split, n in counts.items())
    print(
        f"Imported {len(examples)} gold examples from {args.file}: {inserted} new, "
        f"{skipped} already stored.\nGold examples stored now: {splits}."
    )


def _read_texts(path: Path) -> Iterator[str]:
    """The texts of a .txt (one per line), .csv or .jsonl (a `text` field) file, in order;
    blank ones are skipped (the API refuses them), and a text the service cannot take
    stops the command with its place in the file (common.UsageError)."""
    try:
        for where, text in _texts_with_places(path):
            try:
                yield storable(text)
            except ValueError as exc:
                raise common.UsageError(f"{path}:{where}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise common.UsageError(
            f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None


def _texts_with_places(path: Path) -> Iterator[tuple[int, str]]:
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8-sig", newline="" if suffix == ".csv" else None) as handle:
        if suffix == ".txt":
            for n, line in enumerate(handle, 1):
                text = line.rstrip("\r\n")
                if text.strip():
                    yield n, text
        elif suffix == ".csv":
            reader = csv.DictReader(handle)
            if "text" not in (reader.fieldnames or []):
                raise common.UsageError(f"{path}: the CSV header has no 'text' column")
            for row in reader:
                text = row["text"]
                if text and text.strip():
                    yield reader.line_num, text
        elif suffix in (".jsonl", ".ndjson"):
            for n, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise common.UsageError(f"{path}:{n}: not JSON ({exc.msg})") from None
                value = record.get("text") if isinstance(record, dict) else None
                if not isinstance(value, str):
                    raise common.UsageError(f"{path}:{n}: needs a string field 'text'")
                if value.strip():
                    yield n, value
        else:
            raise common.UsageError(f"{path}: expected a .txt, .csv or .jsonl file")


class _PredictionWriter:
    """Writes one answer per text as JSON lines or CSV (scores as a JSON cell, since a
    model swapped in mid-run may bring other labels)."""

    columns = ("id", "text", "label", "confidence", "model_version", "scores")

    def __init__(self, stream: IO[str], fmt: str) -> None:
        self.stream = stream
        self.csv = csv.writer(stream) if fmt == "csv" else None
        if self.csv:
            self.csv.writerow(self.columns)

    def write(self, text: str, answer: dict[str, Any]) -> None:
        record = {"id": answer["id"], "text": text, **answer}
        if self.csv:
            row = [record[c] for c in self.columns]
            row[-1] = json.dumps(record["scores"])
            self.csv.writerow(row)
        else:
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")


def cmd_label(args: argparse.Namespace) -> None:
    path = Path(args.file)
    if not path.is_file():
        raise common.UsageError(f"file not found: {path}")
    fmt = common.output_format(args.format, args.output, ("jsonl", "csv"))
    # A first pass checks the whole file and counts it before anything is labeled.
    total = sum(1 for _ in _read_texts(path))
    done = 0
    with ExitStack() as stack:
        client = stack.enter_context(common.connect(args))
        stream = (
            stack.enter_context(open(args.output, "w", encoding="utf-8", newline=""))
            if args.output
            else sys.stdout
        )
        writer = _PredictionWriter(stream, fmt)
        bar = stack.enter_context(common.progress(total=total, unit=" texts", desc="label"))
        for batch in common.batches(_read_texts(path), args.batch_size):
            try:
                # 429 and 503 store nothing, so the batch is safely sent again.
                answer = client.post("/label/batch", {"texts": batch}, retries=args.retries)
            except ClientError as exc:
                exc.args = (f"{exc} (stopped after {done} of {total} texts labeled and stored)",)
                raise
            for text, result in zip(batch, answer["results"], strict=True):
                writer.write(text, result)
            stream.flush()
            done += len(batch)
            bar.update(len(batch))
    where = f" to {args.output}" if args.output else ""
    common.say(f"Labeled {done} texts from {path}{where} ({fmt}); every prediction is stored.")


def _write_jsonl(rows: Iterator[dict[str, Any]], stream: IO[str], bar: Any) -> int:
    n = 0
    for row in rows:
        stream.write(json.dumps(row, ensure_ascii=False) + "\n")
        n += 1
        bar.update()
    return n


def _write_csv(rows: Iterator[dict[str, Any]], stream: IO[str], bar: Any) -> int:
    from app.core.label_export import COLUMNS, csv_row

    writer = csv.writer(stream)
    writer.writerow(COLUMNS)
    n = 0
    for row in rows:
        writer.writerow(csv_row(row))
        n += 1
        bar.update()
    return n


def _write_parquet(rows: Iterator[dict[str, Any]], path: Path, bar: Any) -> int:
    """One row group per PARQUET_ROW_GROUP rows, written as they arrive."""
    import pyarrow.parquet as pq

    from app.core.label_export import parquet_batch, parquet_schema

    n = 0
    with pq.ParquetWriter(path, parquet_schema()) as writer:
        group: list[dict[str, Any]] = []
        for row in rows:
            group.append(row)
            bar.update()
            if len(group) == PARQUET_ROW_GROUP:
                writer.write_table(parquet_batch(group))
                n += len(group)
                group = []
        if group:
            writer.write_table(parquet_batch(group))
            n += len(group)
    return n


def _started(rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Send the request now: a refusal (bad filter, bad key) comes before a header row or a
    file is written."""
    first = next(rows, None)

    def chained() -> Iterator[dict[str, Any]]:
        if first is not None:
            yield first
            yield from rows

    return chained()


def cmd_export(args: argparse.Namespace) -> None:
    fmt = common.output_format(args.format, args.output, ("jsonl", "csv", "parquet"))
    if fmt == "parquet" and not args.output:
        raise common.UsageError("Parquet is binary: name a file with -o FILE.parquet")
    filters = {
        "label": args.label,
        "model_version": args.model_version,
        "min_confidence": args.min_confidence,
        "max_confidence": args.max_confidence,
        "since": args.since,
        "until": args.until,
    }
    target = Path(args.output) if args.output else None
    # Written beside the target and renamed at the end: a failed export leaves no file
    # that looks complete.
    partial = target.with_name(target.name + ".partial") if target else None
    with common.connect(args) as client, common.progress(unit=" rows", desc="export") as bar:
        rows = _started(client.stream_lines("/labels/export", **filters))
        try:
            if partial is None:
                count = (_write_csv if fmt == "csv" else _write_jsonl)(rows, sys.stdout, bar)
            elif fmt == "parquet":
                count = _write_parquet(rows, partial, bar)
            else:
                with partial.open("w", encoding="utf-8", newline="") as stream:
                    count = (_write_csv if fmt == "csv" else _write_jsonl)(rows, stream, bar)
        except BaseException:
            if partial is not None:
                partial.unlink(missing_ok=True)
            raise
    if target is not None and partial is not None:
        partial.replace(target)
    where = f" to {target}" if target else ""
    common.say(f"Exported {count} pseudo-labels{where} ({fmt}).")


def add_commands(sub: Any, connection: argparse.ArgumentParser) -> None:
    """Add import-gold, label and export to `pfp`'s subcommands."""
    conn = [connection]

    p = common.leaf(
        sub,
        "import-gold",
        cmd_import_gold,
        "import human-labeled (gold) examples from a CSV or JSONL file",
        "The file has 'text' and 'label' and an optional 'split' (train, dev, test or gate);\n"
        "rows without a split are deduplicated and split 70/10/10/10 train/dev/gate/test\n"
        "with --seed, as the bootstrap does. Texts already stored are skipped. Labels must\n"
        "be the serving model's.\n\n"
        "example:\n  pfp import-gold more-gold.csv\n",
        conn,
    )
    p.add_argument("file", help="a .csv or .jsonl file")
    p.add_argument("--seed", type=int, help="seed of the split (default: SEED setting)")
    p.add_argument("--batch-size", type=int, default=1000, help="examples per request")

    p = common.leaf(
        sub,
        "label",
        cmd_label,
        "label every text of a file with the serving model",
        "Input: .txt (one text per line), .csv or .jsonl (a 'text' column); blank texts\n"
        "are skipped. Output, in input order: one record per text with id, text, label,\n"
        "confidence, model_version and scores, as JSON lines (stdout's default) or CSV\n"
        "(-o *.csv or --format csv). Every prediction is stored, as with POST /label.\n\n"
        "examples:\n  pfp label tweets.txt -o predictions.csv\n"
        "  pfp label tweets.jsonl | jq -r .label\n",
        conn,
    )
    p.add_argument("file", help="a .txt, .csv or .jsonl file")
    p.add_argument("-o", "--output", help="output file (default: stdout)")
    p.add_argument("--format", choices=("jsonl", "csv"), help="default: from -o, else jsonl")
    p.add_argument("--batch-size", type=int, default=64, help="texts per request (default 64)")
    p.add_argument(
        "--retries", type=int, default=5, help="times a batch refused with 429/503 is resent"
    )

    p = common.leaf(
        sub,
        "export",
        cmd_export,
        "export stored pseudo-labels as JSON lines, CSV or Parquet",
        "Rows come in id order and are written as they arrive: memory stays flat however\n"
        "many rows match (Parquet: one row group per 10,000 rows). Times are ISO 8601;\n"
        "without an offset they mean UTC. --since is inclusive, --until exclusive.\n\n"
        "examples:\n  pfp export -o labels.parquet --min-confidence 0.9\n"
        "  pfp export --model-version 2 --since 2025-01-01T00:00:00Z --format csv > v2.csv\n",
        conn,
    )
    p.add_argument("-o", "--output", help="output file (default: stdout)")
    p.add_argument(
        "--format", choices=("jsonl", "csv", "parquet"), help="default: from -o, else jsonl"
    )
    p.add_argument("--label", help="only rows with this label")
    p.add_argument("--model-version", type=int, help="only rows made by this version")
    p.add_argument("--min-confidence", type=float, help="only rows with confidence >= this")
    p.add_argument("--max-confidence", type=float, help="only rows with confidence <= this")
    p.add_argument("--since", help="only rows stored at or after this time")
    p.add_argument("--until", help="only rows stored before this time")
