"""The Celery application, configured from the settings.

With REDIS_URL set, Redis is the broker. Without it, the embedded broker is kombu's
filesystem transport under DATA_DIR/broker: it needs no server and works between the
API process and a worker process on one machine.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import setup_logging, task_postrun, task_prerun

from app.core import logs
from app.core.config import Settings, get_settings
from workers.queues import MAINTENANCE_QUEUE, TRAINING_QUEUE

# Longer than the longest job: Redis re-delivers an unacknowledged job after this long.
VISIBILITY_TIMEOUT_SECONDS = 6 * 3600
JUDGE_EVERY_SECONDS = 60.0


def broker_options(settings: Settings) -> tuple[str, dict[str, object]]:
    if settings.redis_url:
        return settings.redis_url, {
            "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
            "socket_connect_timeout": 3,
            "socket_timeout": 5,
        }
    folder = settings.data_dir / "broker"
    for sub in ("queue", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    # The filesystem transport ignores the host, but kombu warns on every connection that
    # names none ("No hostname was supplied"), so each job submitted printed that line.
    return "filesystem://localhost/", {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
    }


def make_celery(settings: Settings) -> Celery:
    url, transport_options = broker_options(settings)
    app = Celery("pfp", broker=url)
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        # Job state lives in our store; Celery results would be a second, stale copy.
        task_ignore_result=True,
        task_default_queue=MAINTENANCE_QUEUE,
        # send_task by name (the API) follows these routes as .delay() does (beat).
        task_routes={
            "pfp.retrain": {"queue": TRAINING_QUEUE},
            "pfp.review_traffic": {"queue": TRAINING_QUEUE},
        },
        # A job is acknowledged only when done, so a worker that dies hands it on.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One long job at a time per worker process; do not hoard queued jobs.
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1,
        worker_hijack_root_logger=False,
        beat_schedule={
            "maybe-retrain": {
                "task": "pfp.maybe_retrain",
                "schedule": settings.retrain_interval_seconds,
            },
            # Deadlines of candidates waiting for reviews are kept to the minute; the
            # review API also asks after each answer.
            "judge-pending": {"task": "pfp.judge_pending", "schedule": JUDGE_EVERY_SECONDS},
            "sweep-stale-jobs": {
                "task": "pfp.sweep_stale_jobs",
                "schedule": max(60.0, settings.job_stale_seconds / 3),
            },
        },
        timezone="UTC",
    )
    return app


@setup_logging.connect  # type: ignore[untyped-decorator]  # Celery is untyped
def _configure_logging(**_kwargs: Any) -> None:
    """Worker and beat log like the API (LOG_FORMAT); connecting here stops Celery from
    installing its own handlers. Pool processes inherit it when they fork."""
    logs.configure_logging(get_settings())


@task_prerun.connect  # type: ignore[untyped-decorator]  # Celery is untyped
def _task_request_id(task_id: str | None = None, **_kwargs: Any) -> None:
    # A task's lines carry its task id where an API request's carry the request id.
    logs.request_id.set(task_id or logs.NO_REQUEST)


@task_postrun.connect  # type: ignore[untyped-decorator]  # Celery is untyped
def _clear_request_id(**_kwargs: Any) -> None:
    logs.request_id.set(logs.NO_REQUEST)


celery_app = make_celery(get_settings())
