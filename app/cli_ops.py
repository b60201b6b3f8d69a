"""The operator commands of `pfp`: gold import, labeling files, export, jobs and models.

Each one talks to a running API over HTTP (see app/client.py), so it works the same
against this machine and a remote deployment, with the API's validation and keys. Data
goes to stdout or a file; progress bars (on a terminal) and summaries go to stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from app.client import (
    KEY_VARIABLE,
    URL_VARIABLE,
    ClientError,
    ServiceClient,
    default_api_key,
    default_url,
)
from app.core.config import get_settings
from app.core.progress import progress_bar
from app.core.texts import storable
from app.core.times import iso_utc

# Requests stay well under the API's default MAX_BODY_BYTES (4 MB).
MAX_REQUEST_BYTES = 1_000_000
# Rows per Parquet row group: what `export` holds in memory at once.
PARQUET_ROW_GROUP = 10_000
FINISHED = ("succeeded", "failed", "cancelled")


class UsageError(ClientError):
    """A bad argument or input file: nothing was sent."""

    exit_status = 2


Formatter = argparse.RawDescriptionHelpFormatter


def _client(args: argparse.Namespace) -> ServiceClient:
    settings = get_settings()
    return ServiceClient(
        args.url or default_url(settings), args.api_key or default_api_key(settings)
    )


def _progress(**kwargs: Any) -> Any:
    return progress_bar(**kwargs)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _batches(
    items: Iterable[Any], max_items: int, max_bytes: int = MAX_REQUEST_BYTES
) -> Iterator[list[Any]]:
    """Consecutive batches of at most `max_items` items and about `max_bytes` of JSON."""
    batch: list[Any] = []
    size = 0
    for item in items:
        item_size = len(json.dumps(item, ensure_ascii=False).encode()) + 2
        if batch and (len(batch) >= max_items or size + item_size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item_size
    if batch:
        yield batch


def _output_format(explicit: str | None, output: str | None, allowed: tuple[str, ...]) -> str:
    """--format if given, else the output file's extension, else JSON lines."""
    if explicit:
        return explicit
    if not output:
        return "jsonl"
    suffix = Path(output).suffix.lower().lstrip(".")
    suffix = {"ndjson": "jsonl", "pq": "parquet"}.get(suffix, suffix)
    if suffix not in allowed:
        raise UsageError(
            f"cannot tell the format of {output!r} from its extension: "
            f"name it .{' / .'.join(allowed)} or pass --format"
        )
    return suffix


# ---------------------------------------------------------------------------- import-gold


def cmd_import_gold(args: argparse.Namespace) -> None:
    from app.ml.data import GoldFileError, read_gold_file

    seed = args.seed if args.seed is not None else get_settings().seed
    try:
        items = read_gold_file(Path(args.file), seed)
    except GoldFileError as exc:
        raise UsageError(str(exc)) from None
    if not items:
        raise UsageError(f"{args.file}: no gold examples in it")
    examples = [{"text": i.text, "label": i.label, "split": i.split} for i in items]
    inserted = skipped = 0
    counts: dict[str, int] = {}
    with _client(args) as client, _progress(total=len(examples), unit=" ex", desc="gold") as bar:
        for batch in _batches(examples, args.batch_size):
            answer = client.post("/gold", {"examples": batch})
            inserted += answer["inserted"]
            skipped += answer["skipped_duplicates"]
            counts = answer["split_counts"]
            bar.update(len(batch))
    splits = ", ".join(f"{split} {counts.get(split, 0)}" for split in ("train", "dev", "test"))
    print(
        f"Imported {len(examples)} gold examples from {args.file}: {inserted} new, "
        f"{skipped} already stored.\nGold examples stored now: {splits}."
    )


# ---------------------------------------------------------------------------------- label


def _read_texts(path: Path) -> Iterator[str]:
    """The texts of a .txt (one per line), .csv or .jsonl (a `text` field) file, in order;
    blank ones are skipped (the API refuses them), and a text the service cannot take
    stops the command with its place in the file (UsageError)."""
    try:
        for where, text in _texts_with_places(path):
            try:
                yield storable(text)
            except ValueError as exc:
                raise UsageError(f"{path}:{where}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None


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
                raise UsageError(f"{path}: the CSV header has no 'text' column")
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
                    raise UsageError(f"{path}:{n}: not JSON ({exc.msg})") from None
                value = record.get("text") if isinstance(record, dict) else None
                if not isinstance(value, str):
                    raise UsageError(f"{path}:{n}: needs a string field 'text'")
                if value.strip():
                    yield n, value
        else:
            raise UsageError(f"{path}: expected a .txt, .csv or .jsonl file")


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
        raise UsageError(f"file not found: {path}")
    fmt = _output_format(args.format, args.output, ("jsonl", "csv"))
    # A first pass checks the whole file and counts it before anything is labeled.
    total = sum(1 for _ in _read_texts(path))
    done = 0
    with ExitStack() as stack:
        client = stack.enter_context(_client(args))
        stream = (
            stack.enter_context(open(args.output, "w", encoding="utf-8", newline=""))
            if args.output
            else sys.stdout
        )
        writer = _PredictionWriter(stream, fmt)
        bar = stack.enter_context(_progress(total=total, unit=" texts", desc="label"))
        for batch in _batches(_read_texts(path), args.batch_size):
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
    _say(f"Labeled {done} texts from {path}{where} ({fmt}); every prediction is stored.")


# --------------------------------------------------------------------------------- export


def _write_jsonl(rows: Iterator[dict[str, Any]], stream: IO[str], bar: Any) -> int:
    n = 0
    for row in rows:
        stream.write(json.dumps(row, ensure_ascii=False) + "\n")
        n += 1
        bar.update()
    return n


def _write_csv(rows: Iterator[dict[str, Any]], stream: IO[str], bar: Any) -> int:
    from app.label_export import COLUMNS, csv_row

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

    from app.label_export import parquet_batch, parquet_schema

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
    fmt = _output_format(args.format, args.output, ("jsonl", "csv", "parquet"))
    if fmt == "parquet" and not args.output:
        raise UsageError("Parquet is binary: name a file with -o FILE.parquet")
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
    with _client(args) as client, _progress(unit=" rows", desc="export") as bar:
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
    _say(f"Exported {count} pseudo-labels{where} ({fmt}).")


# ----------------------------------------------------------------------------------- jobs


def _param(text: str) -> tuple[str, Any]:
    """`k=v`; v is read as JSON where it parses (numbers, true, null), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def _when(stamp: str | None) -> str:
    """A time from the API as the CLI shows every time: ISO 8601, UTC, `Z`."""
    return iso_utc(datetime.fromisoformat(stamp.replace("Z", "+00:00"))) if stamp else "-"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _job_result(job: dict[str, Any]) -> str:
    if job["status"] == "succeeded":
        if job["promoted"]:
            return f"published v{job['candidate_version']}"
        return f"kept v{job['champion_version']}"
    return (job.get("error") or "")[:60]


def cmd_jobs_list(args: argparse.Namespace) -> None:
    with _client(args) as client:
        jobs = client.get("/jobs", limit=args.limit)
    if args.json:
        print(json.dumps(jobs, indent=2))
        return
    if not jobs:
        print("No jobs yet. Start one with: pfp jobs submit")
        return
    rows = [
        [
            j["id"],
            j["status"],
            j["stage"] or "-",
            f"{j['progress']:.0%}",
            j["trigger"],
            _when(j["created_at"]),
            _job_result(j),
        ]
        for j in jobs
    ]
    print(_table(["ID", "STATUS", "STAGE", "PROGRESS", "TRIGGER", "CREATED", "RESULT"], rows))


def _watch(client: ServiceClient, job_id: str, interval: float) -> int:
    """Follow a job until it ends; 0 if it succeeded, 1 if it failed or was cancelled."""
    path = f"/jobs/{quote(job_id, safe='')}"
    job = client.get(path)
    with _progress(total=1000, desc=job["stage"] or job["status"], bar_format=_BAR) as bar:
        while True:
            bar.set_description(job["stage"] or job["status"])
            bar.set_postfix_str(job["status"])
            bar.update(round(job["progress"] * 1000) - bar.n)
            if job["status"] in FINISHED:
                break
            time.sleep(interval)
            job = client.get(path)
    print(f"Job {job['id']} {job['status']}.")
    if job.get("decision_reason"):
        print(f"Decision: {job['decision_reason']}")
    if job.get("error"):
        print(f"Error: {job['error']}")
    return 0 if job["status"] == "succeeded" else 1


# tqdm puts ": " after {desc} itself, and ", " before {postfix} (the status).
_BAR = "{desc}{percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}"


def cmd_jobs_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            return _watch(client, args.id, args.interval)
        except KeyboardInterrupt:
            _say(f"Stopped watching; job {args.id} goes on (pfp jobs cancel {args.id} stops it).")
            return 130


def cmd_jobs_submit(args: argparse.Namespace) -> int:
    params = dict(args.param or [])
    with _client(args) as client:
        job = client.post("/jobs", params)
        print(f"Queued job {job['id']}.")
        if not args.watch:
            _say(f"Follow it with: pfp jobs watch {job['id']}")
            return 0
        try:
            return _watch(client, job["id"], args.interval)
        except KeyboardInterrupt:
            _say(f"Stopped watching; job {job['id']} goes on.")
            return 130


def cmd_jobs_cancel(args: argparse.Namespace) -> None:
    with _client(args) as client:
        job = client.post(f"/jobs/{quote(args.id, safe='')}/cancel")
    if job["status"] == "cancelled":
        print(f"Job {job['id']} cancelled.")
    else:
        print(f"Job {job['id']} is {job['status']}: asked to stop at its next step.")


# --------------------------------------------------------------------------------- models


def _f1(metrics: dict[str, Any], split: str) -> str:
    value = (metrics.get(split) or {}).get("macro_f1")
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def cmd_models_list(args: argparse.Namespace) -> None:
    with _client(args) as client:
        models = client.get("/models")
    if args.json:
        print(json.dumps(models, indent=2))
        return
    if not models:
        print("No model versions yet: the first one is published by `pfp serve` or `bootstrap`.")
        return
    rows = [
        [
            f"{'*' if m['active'] else ' '} v{m['version']}",
            m["state"],
            m["decision"],
            _f1(m["metrics"], "dev"),
            _f1(m["metrics"], "test"),
            f"v{m['parent_version']}" if m["parent_version"] else "-",
            _when(m["created_at"]),
        ]
        for m in models
    ]
    print(_table(["VERSION", "STATE", "DECISION", "DEV F1", "TEST F1", "PARENT", "CREATED"], rows))
    print("(* active)")


def cmd_models_activate(args: argparse.Namespace) -> None:
    with _client(args) as client:
        model = client.post(f"/models/{args.version}/activate")
    print(f"v{model['version']} is active; API processes swap to it within seconds.")


# ---------------------------------------------------------------------------------- parser


def _connection() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--url",
        help=f"the API's base URL (default: ${URL_VARIABLE}, else http://127.0.0.1:PORT)",
    )
    group.add_argument(
        "--api-key",
        help=f"admin API key (default: ${KEY_VARIABLE}, else the first ADMIN_API_KEYS key, "
        "else the generated DATA_DIR/admin_api_key)",
    )
    return parent


def _leaf(
    sub: Any,
    name: str,
    func: Callable[[argparse.Namespace], int | None],
    help: str,
    epilog: str,
    parents: list[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        epilog=epilog,
        formatter_class=Formatter,
        parents=parents,
    )
    parser.set_defaults(func=func)
    return parser


def add_commands(sub: Any) -> None:
    """Add the operator commands to `pfp`'s subcommands."""
    conn = [_connection()]

    p = _leaf(
        sub,
        "import-gold",
        cmd_import_gold,
        "import human-labeled (gold) examples from a CSV or JSONL file",
        "The file has 'text' and 'label' and an optional 'split' (train, dev or test); rows\n"
        "without a split are deduplicated and split 80/10/10 with --seed, as the bootstrap\n"
        "does. Texts already stored are skipped. Labels must be the serving model's.\n\n"
        "example:\n  pfp import-gold more-gold.csv\n",
        conn,
    )
    p.add_argument("file", help="a .csv or .jsonl file")
    p.add_argument("--seed", type=int, help="seed of the split (default: SEED setting)")
    p.add_argument("--batch-size", type=int, default=1000, help="examples per request")

    p = _leaf(
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

    p = _leaf(
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

    jobs = sub.add_parser(
        "jobs",
        help="list, submit, watch and cancel retraining jobs",
        description="Retraining jobs: list, submit, watch and cancel.",
        epilog="examples:\n  pfp jobs submit --param pretrain_epochs=2 --watch\n  pfp jobs list\n",
        formatter_class=Formatter,
    )
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    p = _leaf(
        jobs_sub,
        "list",
        cmd_jobs_list,
        "the newest jobs first",
        "example:\n  pfp jobs list --limit 5\n",
        conn,
    )
    p.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    watch_epilog = (
        "The bar shows the job's stage and progress until it ends. Exit status: 0 when\n"
        "the job succeeded, 1 when it failed or was cancelled.\n\n"
    )
    p = _leaf(
        jobs_sub,
        "submit",
        cmd_jobs_submit,
        "queue a retraining job on everything stored so far",
        "Parameters are those of POST /jobs (README, Jobs); unknown ones are refused.\n"
        "Values are read as JSON where they parse (2, 0.5, true), else as text.\n\n"
        "example:\n  pfp jobs submit --param mlm_weight=0.5 --param label_mode=hard --watch\n",
        conn,
    )
    p.add_argument(
        "--param",
        action="append",
        type=_param,
        metavar="KEY=VALUE",
        help="a job parameter (repeat for more)",
    )
    p.add_argument("--watch", action="store_true", help="then follow it as `jobs watch` does")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    p = _leaf(
        jobs_sub,
        "watch",
        cmd_jobs_watch,
        "follow a job with a progress bar until it ends",
        watch_epilog + "example:\n  pfp jobs watch 5f0c3b1e...\n",
        conn,
    )
    p.add_argument("id", help="the job's id")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    p = _leaf(
        jobs_sub,
        "cancel",
        cmd_jobs_cancel,
        "cancel a job",
        "A queued job ends at once; a running one stops at its next step.\n\n"
        "example:\n  pfp jobs cancel 5f0c3b1e...\n",
        conn,
    )
    p.add_argument("id", help="the job's id")

    models = sub.add_parser(
        "models",
        help="list model versions, or activate one (rollback)",
        description="Model versions: list them, or activate one.",
        epilog="examples:\n  pfp models list\n  pfp models activate 1\n",
        formatter_class=Formatter,
    )
    models_sub = models.add_subparsers(dest="models_command", required=True)
    p = _leaf(
        models_sub,
        "list",
        cmd_models_list,
        "every version, newest first, with its dev and test macro-F1",
        "example:\n  pfp models list --json | jq '.[0].metrics'\n",
        conn,
    )
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p = _leaf(
        models_sub,
        "activate",
        cmd_models_activate,
        "serve this version (a rollback, or a candidate chosen by hand)",
        "Every API process swaps to it without a restart.\n\nexample:\n  pfp models activate 1\n",
        conn,
    )
    p.add_argument("version", type=int, help="the version number, as in `models list`")
