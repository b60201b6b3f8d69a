"""`pfp jobs`: list, submit, watch and cancel retraining jobs."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any
from urllib.parse import quote

from app.cli import common
from app.cli.client import (
    ServiceClient,
)
from app.ml.job_params import assignment

FINISHED = ("succeeded", "failed", "cancelled")
PENDING_REVIEW = "pending_review"


def _param(text: str) -> tuple[str, Any]:
    try:
        return assignment(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _job_result(job: dict[str, Any]) -> str:
    if job["status"] == "succeeded":
        if job["promoted"]:
            return f"published v{job['candidate_version']}"
        return f"kept v{job['champion_version']}"
    if job["status"] == PENDING_REVIEW and job.get("review"):
        return f"v{job['candidate_version']} pending review: needs {job['review']['needs']} more"
    return (job.get("error") or "")[:60]


def review_line(job: dict[str, Any]) -> str | None:
    """Where a waiting candidate stands, in one line (None for a job not waiting)."""
    review = job.get("review")
    if job["status"] != PENDING_REVIEW or not review:
        return None
    tally = review["tally"]
    deadline = common.when(review["deadline"]) if review.get("deadline") else "none"
    if review.get("waits_for_traffic"):
        return (
            f"Pending review: every queued disagreement is labeled; needs {review['needs']} "
            f"more reviews ({review['decisive']} of {review['planned_decisive']} decisive "
            f"labels); waits for new traffic to be stored, then a worker queues its "
            f"disagreements ({review['traffic_batches']} batches so far); deadline {deadline}."
        )
    return (
        f"Pending review: needs {review['needs']} more reviews "
        f"({review['decisive']} of {review['planned_decisive']} decisive labels; "
        f"{tally['wins']} wins, {tally['losses']} losses, {tally['ties']} ties); "
        f"{review['open']} open, {review['labeled']} labeled; power {review['power']:.0%}; "
        f"{review['looks_used']} of {review['looks']} looks taken; deadline {deadline}. "
        f"Label them: pfp review --queue disagreement --job {job['id']}"
    )


def cmd_jobs_list(args: argparse.Namespace) -> None:
    with common.connect(args) as client:
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
            common.when(j["created_at"]),
            _job_result(j),
        ]
        for j in jobs
    ]
    print(common.table(["ID", "STATUS", "STAGE", "PROGRESS", "TRIGGER", "CREATED", "RESULT"], rows))


def _watch(client: ServiceClient, job_id: str, interval: float) -> int:
    """Follow a job until it ends, through its wait for reviews; 0 once its candidate was
    published or rejected, 1 if it failed or was cancelled."""
    path = f"/jobs/{quote(job_id, safe='')}"
    job = client.get(path)
    said: tuple[Any, ...] | None = None
    with common.progress(total=1000, desc=job["stage"] or job["status"], bar_format=_BAR) as bar:
        while True:
            bar.set_description(job["stage"] or job["status"])
            bar.set_postfix_str(job["status"])
            bar.update(round(job["progress"] * 1000) - bar.n)
            review = job.get("review") or {}
            stand = (review.get("needs"), review.get("decisive"), review.get("looks_used"))
            waiting = review_line(job)
            if waiting is not None and stand != said:  # what it needs changed
                print(waiting, flush=True)  # stdout: the bar is on stderr
                said = stand
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
    with common.connect(args) as client:
        try:
            return _watch(client, args.id, args.interval)
        except KeyboardInterrupt:
            common.say(
                f"Stopped watching; job {args.id} goes on (pfp jobs cancel {args.id} stops it)."
            )
            return 130


def cmd_jobs_submit(args: argparse.Namespace) -> int:
    params = dict(args.param or [])
    with common.connect(args) as client:
        job = client.post("/jobs", params)
        print(f"Queued job {job['id']}.")
        if not args.watch:
            common.say(f"Follow it with: pfp jobs watch {job['id']}")
            return 0
        try:
            return _watch(client, job["id"], args.interval)
        except KeyboardInterrupt:
            common.say(f"Stopped watching; job {job['id']} goes on.")
            return 130


def cmd_jobs_cancel(args: argparse.Namespace) -> None:
    with common.connect(args) as client:
        job = client.post(f"/jobs/{quote(args.id, safe='')}/cancel")
    if job["status"] == "cancelled":
        print(f"Job {job['id']} cancelled.")
    else:
        print(f"Job {job['id']} is {job['status']}: asked to stop at its next step.")


def add_commands(sub: Any, connection: argparse.ArgumentParser) -> None:
    """Add `jobs` to `pfp`'s subcommands."""
    conn = [connection]

    jobs = sub.add_parser(
        "jobs",
        help="list, submit, watch and cancel retraining jobs",
        description="Retraining jobs: list, submit, watch and cancel.",
        epilog="examples:\n  pfp jobs submit --param pretrain_epochs=2 --watch\n  pfp jobs list\n",
        formatter_class=common.Formatter,
    )
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    p = common.leaf(
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
        "The bar shows the job's stage and progress until it ends. A job whose candidate\n"
        "waits for reviews (pending_review) is watched on, with a line each time what it\n"
        "needs changes. Exit status: 0 once its candidate was published or rejected, 1 when\n"
        "it failed or was cancelled.\n\n"
    )
    p = common.leaf(
        jobs_sub,
        "submit",
        cmd_jobs_submit,
        "queue a retraining job on everything stored so far",
        "Parameters are those of POST /jobs (README, Jobs), by their flat name\n"
        "(pretrain_epochs) or dotted (pretrain.epochs); unknown ones are refused.\n"
        "Values are read as JSON where they parse (2, 0.5, true), else as text.\n\n"
        "example:\n  pfp jobs submit --param mlm_weight=0.5 --param pretrain.label_mode=hard "
        "--watch\n",
        conn,
    )
    p.add_argument(
        "--param",
        action="append",
        type=_param,
        metavar="NAME=VALUE",
        help="a job parameter (repeat for more)",
    )
    p.add_argument("--watch", action="store_true", help="then follow it as `jobs watch` does")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    p = common.leaf(
        jobs_sub,
        "watch",
        cmd_jobs_watch,
        "follow a job with a progress bar until it ends",
        watch_epilog + "example:\n  pfp jobs watch 5f0c3b1e...\n",
        conn,
    )
    p.add_argument("id", help="the job's id")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    p = common.leaf(
        jobs_sub,
        "cancel",
        cmd_jobs_cancel,
        "cancel a job",
        "A queued job ends at once; a running one stops at its next step.\n\n"
        "example:\n  pfp jobs cancel 5f0c3b1e...\n",
        conn,
    )
    p.add_argument("id", help="the job's id")
