"""The compose stack under test: the shipped docker-compose.yml and Dockerfile, run in a real
Docker engine with the stand-in images of deploy/stand-ins/compose.yml.

Only `make test-compose` (`pytest --compose tests/deploy`) runs these tests; the stack is
started once for the module and the tests walk it through a deployment's life in order.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy import engine
from tests.deploy.stack import FIGURES, PANELS, Stack, free_port_pair


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    images = engine.prepare()
    FIGURES["app image size (MB)"] = round(images.app_size_bytes / 1e6)
    FIGURES["app image build (s)"] = round(images.app_build_seconds, 1)
    with tempfile.TemporaryDirectory(prefix="pfp-compose-") as tmp:
        env_file = Path(tmp) / "empty.env"
        env_file.write_text("")
        s = Stack(api_port=free_port_pair(), env_file=env_file)
        # A run that died earlier may have left its project behind.
        s.compose("down", "-v", "--remove-orphans", check=False)
        try:
            yield s
        finally:
            s.compose("down", "-v", "--remove-orphans", check=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("compose figures")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")
    if PANELS:
        terminalreporter.section("dashboard panels, asked of Prometheus")
        for query, answer in PANELS.items():
            terminalreporter.write_line(f"{query}\n    -> {answer}")
