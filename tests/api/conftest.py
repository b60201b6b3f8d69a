"""The API on a tiny published model, with a recording job queue instead of Celery."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from tests.conftest import ADMIN, RecordingQueue


@pytest.fixture
def api(published_copy: Settings):
    """A test client with the admin key; `.queue`, `.settings` and `.store` beside it."""
    queue = RecordingQueue()
    app = create_app(published_copy, job_queue=queue)
    with TestClient(app, headers=ADMIN) as client:
        client.queue = queue  # type: ignore[attr-defined]
        client.settings = published_copy  # type: ignore[attr-defined]
        client.store = app.state.store  # type: ignore[attr-defined]
        yield client
