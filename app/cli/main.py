"""Command line: `python -m app.cli COMMAND` (installed as `pfp`); `pfp COMMAND --help`
explains each command with an example.

Running the service:

serve        everything on one machine: first model if needed, a worker with beat, the API
api          the API alone (docker-compose's api service)
worker       a Celery worker (add --beat on a single machine; --queues training on the
             machine that should train)
beat         Celery beat, the retraining schedule
bootstrap    fine-tune and publish the first model if none is active, then exit

Operating it (over HTTP, against --url / PFP_URL; see data.py, jobs.py, models.py, retention.py,
review.py):

import-gold  import human labels from a CSV or JSONL file
label        label every text of a file; predictions to stdout or a file
export       stored pseudo-labels as JSON lines, CSV or Parquet, filtered
jobs         list, submit, watch and cancel retraining jobs
models       list versions, activate one
retention    archive old pseudo-labels to Parquet and delete them (dry-run first)
review       label the review queues in the terminal; Label Studio and CSV files

Exit status: 0 done; 1 the API refused (its message is printed) or a watched job failed;
2 bad arguments or input file; 3 the service could not be reached.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.cli import common, data, jobs, models, retention, review, teacher
from app.cli.client import ClientError
from app.core.config import Settings, get_settings
from app.core.logs import quiet_third_party_chatter
from workers.queues import MAINTENANCE_QUEUE, QUEUES, TRAINING_QUEUE


def _announce_admin_key(settings: Settings) -> None:
    from app.core.security import ensure_admin_key, key_file

    created = ensure_admin_key(settings)
    if created:
        # The one time the generated key is shown; it is kept in the data folder.
        print(
            f"\nGenerated the admin API key (kept in {key_file(settings)}):\n\n    {created}\n\n"
            "Send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.\n",
            flush=True,
        )


def _bootstrap(settings: Settings) -> None:
    from app.core.progress import progress_bar
    from app.store.database import Store
    from workers.bootstrap import bootstrap_first_model

    store = Store(settings.store_url)
    # Publishing the first model logs at LOG_LEVEL, as a worker publishing the next does.
    logging.getLogger().setLevel(settings.log_level.upper())
    bars: dict[str, Any] = {}

    def progress(stage: str, fraction: float) -> None:
        if stage not in bars:
            for bar in bars.values():
                bar.close()
            bars[stage] = progress_bar(
                total=1000, desc=stage, bar_format="{l_bar}{bar}| {elapsed}<{remaining}"
            )
        bar = bars[stage]
        bar.update(int(fraction * 1000) - bar.n)

    started = time.monotonic()
    print(f"Store: {settings.store_url.split('@')[-1]}  Models: {settings.models_path}", flush=True)
    _announce_admin_key(settings)
    try:
        version = bootstrap_first_model(settings, store, progress)
    finally:
        for bar in bars.values():
            bar.close()
    if version is None:
        print("A model is already active; no bootstrap needed.", flush=True)
    else:
        print(
            f"Published the first model as v{version} in {time.monotonic() - started:.0f} s.",
            flush=True,
        )
    store.dispose()


def _quiet(settings: Settings) -> list[str]:
    # JSON logs: Celery's start-up banner is plain text on stdout; leave it out so that every
    # line a log shipper reads is JSON.
    return ["--quiet"] if settings.log_format == "json" else []


def _celery_worker_args(
    settings: Settings, beat: bool, queues: Sequence[str] = QUEUES
) -> list[str]:
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.tasks",
        *_quiet(settings),
        "worker",
        "--loglevel",
        settings.log_level.upper(),
        # One job at a time: training already uses every core.
        "--concurrency",
        "1",
        "--without-mingle",
        "--without-gossip",
        "--queues",
        ",".join(queues),
    ]
    if beat:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        args += ["--beat", "--schedule", str(settings.data_dir / "celerybeat-schedule")]
    return args


def _queues(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(QUEUES))
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown queue {', '.join(unknown) or repr(text)}; the queues are " + ", ".join(QUEUES)
        )
    return names


def _run_api(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    processes, threads = settings.api_layout
    if processes > 1:
        _share_metrics()
        # Created here, once: of processes starting together one could read it half written.
        _announce_admin_key(settings)
    print(
        f"API: {processes} process{'es' if processes > 1 else ''} x {threads} inference "
        f"thread{'s' if threads > 1 else ''} (API_PROCESSES, TORCH_THREADS)",
        flush=True,
    )
    options: dict[str, Any] = {
        "factory": True,
        "host": host,
        "port": port,
        "log_level": settings.log_level.lower(),
        # Let in-flight requests finish on shutdown.
        "timeout_graceful_shutdown": 20,
    }
    if processes == 1:
        uvicorn.run("app.main:create_app", **options)
        return
    from app.cli.api_processes import run_processes

    try:
        # Each process loads, tunes and swaps its model on its own, as replicas do, and
        # accepts on a socket of its own, so connections spread evenly over them.
        run_processes(uvicorn.Config("app.main:create_app", **options), processes)
    except OSError as exc:
        raise SystemExit(f"cannot listen on {host}:{port}: {exc}") from exc


def _share_metrics() -> None:
    """Point prometheus_client's multiprocess mode at a fresh folder of this machine (not
    the data volume: replicas in other containers must not mix their figures) before the
    API processes start, so that every process's /metrics reports all of them."""
    import atexit
    import shutil
    import tempfile

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # the operator's own folder
        folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):  # what the processes of an earlier run wrote
            stale.unlink(missing_ok=True)
        return
    folder = Path(tempfile.mkdtemp(prefix="pfp-metrics-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def _die_with_parent() -> None:
    """In the worker child: get SIGTERM when `serve` dies, however it dies (uvicorn
    re-raises the signal that stopped it, so `serve` cannot always clean up itself)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def cmd_serve(args: argparse.Namespace) -> None:
    settings = get_settings()
    _bootstrap(settings)
    worker = None
    if not args.no_worker:
        worker = subprocess.Popen(
            _celery_worker_args(settings, beat=True),
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        mode = "embedded broker" if settings.embedded else "Redis"
        print(f"Started a Celery worker with beat ({mode}), pid {worker.pid}.", flush=True)
    print(
        f"Serving on http://{args.host or settings.host}:{args.port or settings.port}", flush=True
    )
    try:
        _run_api(settings, args.host or settings.host, args.port or settings.port)
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()


def cmd_api(args: argparse.Namespace) -> None:
    settings = get_settings()
    _run_api(settings, args.host or settings.host, args.port or settings.port)


def cmd_worker(args: argparse.Namespace) -> None:
    settings = get_settings()
    argv = _celery_worker_args(settings, beat=args.beat, queues=args.queues)
    os.execv(argv[0], argv)


def cmd_beat(_args: argparse.Namespace) -> None:
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.tasks",
        *_quiet(settings),
        "beat",
        "--loglevel",
        settings.log_level.upper(),
        "--schedule",
        str(settings.data_dir / "celerybeat-schedule"),
    ]
    os.execv(argv[0], argv)


def cmd_bootstrap(_args: argparse.Namespace) -> None:
    _bootstrap(get_settings())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pfp",
        description="A text classification service that pre-trains a better model of itself "
        "on its own predictions. Configuration comes from environment variables (README). "
        "serve, api, worker, beat and bootstrap run the service; import-gold, label, export, "
        "jobs and models operate a running one over HTTP (--url, PFP_URL).",
        epilog="Run `pfp COMMAND --help` for a command's options and an example. Exit status: "
        "0 done; 1 the API refused or a watched job failed; 2 bad arguments or input; 3 the "
        "service could not be reached.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run everything on this machine (embedded mode)")
    serve.add_argument("--host", default=None, help="bind address (default: HOST setting)")
    serve.add_argument("--port", type=int, default=None, help="port (default: PORT setting)")
    serve.add_argument("--no-worker", action="store_true", help="do not start a worker")
    serve.set_defaults(func=cmd_serve)
    api = sub.add_parser("api", help="run the API alone")
    api.add_argument("--host", default=None)
    api.add_argument("--port", type=int, default=None)
    api.set_defaults(func=cmd_api)
    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument(
        "--beat", action="store_true", help="also run the schedule (one worker only)"
    )
    worker.add_argument(
        "--queues",
        type=_queues,
        default=list(QUEUES),
        metavar="Q[,Q]",
        help=f"the queues to take tasks from (default: {','.join(QUEUES)}); "
        f"`{TRAINING_QUEUE}` alone on the machine that should train, "
        f"`{MAINTENANCE_QUEUE}` alone where it should not",
    )
    worker.set_defaults(func=cmd_worker)
    sub.add_parser("beat", help="run Celery beat").set_defaults(func=cmd_beat)
    sub.add_parser("bootstrap", help="publish the first model if none is active").set_defaults(
        func=cmd_bootstrap
    )
    connection = common.connection_options()
    for commands in (data, jobs, models, retention, review, teacher):
        commands.add_commands(sub, connection)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # One log line per request would bury the operator commands' own output.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    quiet_third_party_chatter()
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
    except ClientError as exc:
        # The API's message (or why it could not be reached) is the whole story: no traceback.
        print(f"pfp {args.command}: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_status)
    except BrokenPipeError:
        # `pfp export | head`: the reader has gone, which is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    if status:
        sys.exit(status)
