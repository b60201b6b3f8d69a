"""`pfp review`: answer the review queues in the terminal, fill the uncertainty queue, and
move a queue to and from Label Studio (task JSON) or a spreadsheet (CSV).

`pfp review` alone shows one text at a time (app/cli/review_terminal.py). The files go
through the API's export and import routes, which check every task or row before
anything is written.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from app.cli import common
from app.cli.review_terminal import ReviewSession

QUEUES = ("uncertainty", "disagreement")
FORMATS = ("labelstudio", "csv")
# What the import needs of a Label Studio export: the rest (predictions, drafts, the
# project's bookkeeping) is left behind, so a large export stays under the body limit.
_TASK_KEYS = ("id", "data", "meta", "annotations")
_ANNOTATION_KEYS = ("id", "result", "was_cancelled", "completed_by", "created_at", "updated_at")


def _file_format(explicit: str | None, path: str | None) -> str:
    """--format, else the file's extension (.json: labelstudio, .csv), else labelstudio."""
    if explicit:
        return explicit
    suffix = Path(path).suffix.lower() if path else ""
    if suffix == ".csv":
        return "csv"
    if suffix in (".json", "") or path is None:
        return "labelstudio"
    raise common.UsageError(
        f"cannot tell the format of {path!r} from its extension: name it .json "
        "(Label Studio) or .csv, or pass --format"
    )


def cmd_review(args: argparse.Namespace) -> int:
    with common.connect(args) as client:
        session = ReviewSession(client, args.queue, job_id=args.job, annotator=args.annotator)
        try:
            return session.run()
        except KeyboardInterrupt:
            session.say("\nStopped.")
            return 130


def cmd_review_fill(args: argparse.Namespace) -> None:
    body = {"size": args.size, "score": args.score, "scan": args.scan}
    with common.connect(args) as client:
        filled = client.post("/review/queues/uncertainty/fill", body)
    print(
        f"Added {filled['added']} texts to the uncertainty queue (of the newest "
        f"{filled['scanned']} stored, {filled['eligible']} neither gold nor queued before); "
        f"{filled['open']} open."
    )


def cmd_review_export(args: argparse.Namespace) -> None:
    fmt = _file_format(args.format, args.output)
    params = {"status": args.status, "job_id": args.job, "limit": args.limit}
    path = f"/review/queues/{args.queue}/export/{fmt}"
    with common.connect(args) as client:
        if fmt == "labelstudio":
            tasks = client.get(path, **params)
            content = json.dumps(tasks, ensure_ascii=False, indent=2) + "\n"
            count = len(tasks)
        else:
            clean = {k: v for k, v in params.items() if v is not None}
            content = client.request("GET", path, params=clean).text
            count = len(list(csv.DictReader(io.StringIO(content))))
    if args.output:
        Path(args.output).write_text(content, encoding="utf-8")
    else:
        sys.stdout.write(content)
    what = "tasks" if fmt == "labelstudio" else "rows"
    where = f" to {args.output}" if args.output else ""
    common.say(f"Wrote {count} {what}{where}.")
    if fmt == "labelstudio":
        common.say(
            "Import it into a Label Studio project whose labeling config is `pfp review "
            "config`; bring the answers back with `pfp review import` (Export > JSON)."
        )


def _slim(tasks: Any) -> Any:
    """A Label Studio export with only what the import reads; anything unexpected is sent
    as it is, for the API to name."""
    if not isinstance(tasks, list):
        return tasks
    slim = []
    for task in tasks:
        if not isinstance(task, dict):
            slim.append(task)
            continue
        kept = {k: task[k] for k in _TASK_KEYS if k in task}
        annotations = kept.get("annotations")
        if isinstance(annotations, list):
            kept["annotations"] = [
                {k: a[k] for k in _ANNOTATION_KEYS if k in a} if isinstance(a, dict) else a
                for a in annotations
            ]
        slim.append(kept)
    return slim


def cmd_review_import(args: argparse.Namespace) -> None:
    fmt = _file_format(args.format, args.file)
    try:
        content = Path(args.file).read_text(encoding="utf-8")
    except OSError as exc:
        raise common.UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise common.UsageError(f"{args.file}: not UTF-8 text (byte {exc.start})") from None
    if fmt == "labelstudio":
        try:
            body: Any = _slim(json.loads(content))
        except json.JSONDecodeError as exc:
            raise common.UsageError(
                f"{args.file}:{exc.lineno}: not JSON ({exc.msg}); expected a Label Studio "
                "JSON export"
            ) from None
    else:
        body = {"csv": content}
    with common.connect(args) as client:
        done = client.post(f"/review/queues/{args.queue}/import/{fmt}", body)
    print(
        f"Imported {args.file} into the {args.queue} queue: {done['labeled']} labeled, "
        f"{done['skipped']} skipped, {done['unchanged']} already so, "
        f"{done['unanswered']} without an answer."
    )


def cmd_review_config(args: argparse.Namespace) -> None:
    with common.connect(args) as client:
        sys.stdout.write(client.request("GET", "/review/labelstudio/config").text)


def add_commands(sub: Any, connection: argparse.ArgumentParser) -> None:
    """Add `review` to `pfp`'s subcommands."""
    conn = [connection]
    review = sub.add_parser(
        "review",
        help="label the review queues in the terminal; Label Studio and CSV files",
        description="Answer a review queue one text at a time: a number or a class's "
        "first letter labels it, s skips, q quits. The uncertainty queue holds the stored "
        "texts the model was least sure of (a label joins the gold train split at once); "
        "the disagreement queue the texts where a job's candidate and champion disagree "
        "(their labels judge the candidate).",
        epilog="examples:\n  pfp review fill --size 100\n  pfp review\n"
        "  pfp review --queue disagreement --job 5f0c3b1e...\n"
        "  pfp review export -o tasks.json && pfp review config > config.xml\n"
        "  pfp review import export-from-label-studio.json\n",
        formatter_class=common.Formatter,
        parents=conn,
    )
    review.add_argument("--queue", choices=QUEUES, default="uncertainty", help="which queue")
    review.add_argument("--job", help="only this job's disagreements")
    review.add_argument("--annotator", help="your name, stored with each label")
    review.set_defaults(func=cmd_review)
    review_sub = review.add_subparsers(dest="review_command")

    p = common.leaf(
        review_sub,
        "fill",
        cmd_review_fill,
        "add the stored texts whose labels would teach the most to the uncertainty queue",
        "Looks at the newest --scan stored predictions, and takes the least sure, in turn\n"
        "from each predicted class; never a gold text, never one queued before.\n\n"
        "example:\n  pfp review fill --size 100 --score entropy\n",
        conn,
    )
    p.add_argument("--size", type=int, default=50, help="most texts to add (default 50)")
    p.add_argument(
        "--score",
        choices=("margin", "entropy"),
        default="margin",
        help="how unsure: top-two probability margin (default) or entropy",
    )
    p.add_argument("--scan", type=int, default=20_000, help="newest stored texts to look at")

    p = common.leaf(
        review_sub,
        "export",
        cmd_review_export,
        "a queue as Label Studio tasks (JSON) or CSV (id,text,label)",
        "The format is --format, else -o's extension (.json: Label Studio, .csv).\n\n"
        "examples:\n  pfp review export -o tasks.json\n"
        "  pfp review export --queue disagreement --job 5f0c... -o review.csv\n",
        conn,
    )
    p.add_argument("--queue", choices=QUEUES, default="uncertainty", help="which queue")
    p.add_argument("--format", choices=FORMATS, help="labelstudio or csv")
    p.add_argument("-o", "--output", help="file to write (default: stdout)")
    p.add_argument(
        "--status", choices=("open", "labeled", "skipped"), default="open", help="default open"
    )
    p.add_argument("--job", help="only this job's disagreements")
    p.add_argument("--limit", type=int, default=1000, help="most items (default 1000)")

    p = common.leaf(
        review_sub,
        "import",
        cmd_review_import,
        "answers from a Label Studio JSON export or a CSV with its label column filled",
        "All or nothing: a task or row that cannot be taken stops the import with its\n"
        "place in the file, and nothing is written. Importing a file twice changes nothing.\n\n"
        "examples:\n  pfp review import project-3-at-2026-12-01.json\n"
        "  pfp review import --queue disagreement review.csv\n",
        conn,
    )
    p.add_argument("file", help="the file (.json: Label Studio export, .csv)")
    p.add_argument("--queue", choices=QUEUES, default="uncertainty", help="which queue")
    p.add_argument("--format", choices=FORMATS, help="labelstudio or csv (default: extension)")

    common.leaf(
        review_sub,
        "config",
        cmd_review_config,
        "the Label Studio labeling config for the active model's classes",
        "Paste it in the project's Settings > Labeling Interface > Code.\n\n"
        "example:\n  pfp review config > config.xml\n",
        conn,
    )
