"""What the research commands (`python -m research`, `python -m research.simulate`) share
on their command lines: job parameters given as `K=V`, and the lines printed once a run
has written its files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def job_params_from(assignments: Sequence[str]) -> dict[str, Any]:
    """The job parameters of `--param K=V` arguments, checked against a job's (ValueError
    naming what is wrong)."""
    from app.ml.job_params import JobParams, assignment

    params = dict(assignment(text) for text in assignments)
    JobParams.model_validate(params)
    return params


def print_written(out: Path, names: Sequence[str], seconds: float) -> None:
    """The run's results.md, then where its files are and how long it took."""
    print((out / "results.md").read_text())
    print(f"Wrote {out}/{', '.join(names)} in {seconds / 60:.1f} min.")
