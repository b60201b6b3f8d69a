"""The embedded broker: a task sent with no Redis lands in DATA_DIR/broker, quietly."""

from __future__ import annotations

import logging

import pytest

from app.core.config import Settings
from workers.celery_app import make_celery


def test_a_task_sent_without_redis_is_queued_on_disk_without_kombu_warnings(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    assert not settings.redis_url
    app = make_celery(settings)
    with caplog.at_level(logging.WARNING):
        app.send_task("pfp.retrain", args=["a-job-id"], queue="training")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    queued = list((settings.data_dir / "broker" / "queue").iterdir())
    assert len(queued) == 1
    assert "a-job-id" in queued[0].read_text()
