"""API_PROCESSES and TORCH_THREADS: the layout `pfp api` and `pfp serve` run by default."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core import config
from app.core.config import Settings


@pytest.mark.parametrize(
    ("cores", "processes", "threads", "layout"),
    [
        (1, 0, 0, (1, 1)),
        (2, 0, 0, (2, 1)),  # one process per core, one thread each: the measured best
        (8, 0, 0, (4, 2)),  # at most 4 processes by default: each holds the model
        (2, 1, 0, (1, 2)),  # one process set: it gets every core
        (16, 3, 2, (3, 2)),  # both set: as set
    ],
)
def test_default_layout_shares_the_usable_cores(
    monkeypatch: pytest.MonkeyPatch,
    cores: int,
    processes: int,
    threads: int,
    layout: tuple[int, int],
) -> None:
    monkeypatch.setattr(config, "usable_cores", lambda: cores)
    settings = Settings(
        data_dir=Path("/nonexistent"), api_processes=processes, torch_threads=threads
    )
    assert settings.api_layout == layout


def test_usable_cores_follow_the_cpu_affinity() -> None:
    import os

    assert config.usable_cores() == len(os.sched_getaffinity(0))


def test_negative_layouts_are_refused() -> None:
    with pytest.raises(ValueError, match="api_processes"):
        Settings(data_dir=Path("/nonexistent"), api_processes=-1)
