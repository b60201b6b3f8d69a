"""`pfp retention`: archive pseudo-labels older than a date to Parquet and delete them.

`pfp retention run --before DATE` is a dry run: it prints what would go. `--apply` starts
the run on a worker (POST /admin/retention) and follows it to its end.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from app.cli import common
from app.cli.client import ServiceClient

FINISHED = ("succeeded", "failed")


def _print_plan(plan: dict[str, Any]) -> None:
    if not plan["rows"]:
        print(f"Nothing to remove: no stored pseudo-label was created before {plan['before']}.")
        return
    print(
        f"{plan['rows']} pseudo-labels created before {plan['before']} (ids up to "
        f"{plan['upto_id']}, stored {common.when(plan['oldest'])} to "
        f"{common.when(plan['newest'])})."
    )
    if plan["running_run"] is not None:
        print(f"Retention run {plan['running_run']} is in progress; wait for it to finish.")


def _follow(client: ServiceClient, run: dict[str, Any], interval: float) -> int:
    """Follow a run until it ends; 0 if it succeeded, 1 if it failed."""
    total = max(1, run["rows"])
    with common.progress(total=total, unit=" rows", desc="deleting") as bar:
        while run["status"] not in FINISHED:
            time.sleep(interval)
            run = client.get(f"/admin/retention/{run['id']}")
            bar.update(min(total, run["deleted"]) - bar.n)
    print(f"Retention run {run['id']} {run['status']}: {run['deleted']} rows deleted.")
    if run.get("archive_path"):
        print(f"Archive (on the worker's disk): {run['archive_path']}")
    if run.get("error"):
        print(f"Error: {run['error']}")
    return 0 if run["status"] == "succeeded" else 1


def cmd_retention_run(args: argparse.Namespace) -> int:
    body = {"before": args.before, "dry_run": not args.apply, "archive": not args.no_archive}
    with common.connect(args) as client:
        if not args.apply:
            _print_plan(client.post("/admin/retention", body))
            common.say("This was a dry run: add --apply to archive and delete these rows.")
            return 0
        run = client.post("/admin/retention", body)
        print(
            f"Started retention run {run['id']}: {run['rows']} rows with ids up to "
            f"{run['upto_id']}; retraining jobs no longer use them."
        )
        if args.no_wait:
            common.say(f"Follow it with: pfp retention list (run {run['id']})")
            return 0
        try:
            return _follow(client, run, args.interval)
        except KeyboardInterrupt:
            common.say(f"Stopped following; retention run {run['id']} goes on.")
            return 130


def cmd_retention_list(args: argparse.Namespace) -> None:
    with common.connect(args) as client:
        runs = client.get("/admin/retention", limit=args.limit)
    if args.json:
        print(json.dumps(runs, indent=2))
        return
    if not runs:
        print("No retention runs yet. See what one would remove: pfp retention run --before DATE")
        return
    rows = [
        [
            str(r["id"]),
            r["status"],
            common.when(r["before"]),
            f"{r['deleted']}/{r['rows']}",
            r["archive_path"] or ("-" if r["archive"] else "(no archive)"),
            common.when(r["created_at"]),
        ]
        for r in runs
    ]
    print(common.table(["ID", "STATUS", "BEFORE", "DELETED", "ARCHIVE", "STARTED"], rows))


def add_commands(sub: Any, connection: argparse.ArgumentParser) -> None:
    """Add `retention` to `pfp`'s subcommands."""
    conn = [connection]
    retention = sub.add_parser(
        "retention",
        help="archive old pseudo-labels to Parquet and delete them (dry-run first)",
        description="Retention: archive pseudo-labels created before a date to Parquet, on the "
        "worker's disk (DATA_DIR/archive), and delete them from the store in batches.",
        epilog="examples:\n  pfp retention run --before 2026-06-01\n"
        "  pfp retention run --before 2026-06-01 --apply\n  pfp retention list\n",
        formatter_class=common.Formatter,
    )
    retention_sub = retention.add_subparsers(dest="retention_command", required=True)
    p = common.leaf(
        retention_sub,
        "run",
        cmd_retention_run,
        "say what a run before a date would remove; with --apply, run it",
        "A time without an offset means UTC. Without --apply nothing changes.\n"
        "With it, retraining jobs stop using the range at once; a worker writes the\n"
        "archive, then deletes in batches of 5,000 rows while /label keeps answering.\n"
        "Exit status: 0 done (or dry run), 1 the run failed.\n\n"
        "example:\n  pfp retention run --before 2026-06-01T00:00:00Z --apply\n",
        conn,
    )
    p.add_argument("--before", required=True, help="remove pseudo-labels created before this")
    p.add_argument("--apply", action="store_true", help="do it (default: a dry run)")
    p.add_argument(
        "--no-archive", action="store_true", help="delete without writing a Parquet copy"
    )
    p.add_argument("--no-wait", action="store_true", help="start the run and return")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    p = common.leaf(
        retention_sub,
        "list",
        cmd_retention_list,
        "the newest retention runs first",
        "example:\n  pfp retention list --limit 5\n",
        conn,
    )
    p.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
