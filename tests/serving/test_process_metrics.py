"""CPU and memory per API process in multiprocess mode: every enrolled process that runs
has its own series, read when scraped, and one that exited has none."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.core.config import Settings
from app.main import create_app
from app.serving.process_metrics import ENROLMENT_SUFFIX, ApiProcessFigures, enrol_api_process
from tests.conftest import ADMIN, RecordingQueue

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

# A stand-in API process: enrols, spends the CPU seconds it is given (on its command line,
# then one figure per line of its input), and answers once each is spent.
PROCESS = """
import sys, time
from pathlib import Path
from app.serving.process_metrics import ApiProcessFigures
def burn(seconds):
    until = time.process_time() + float(seconds)
    while time.process_time() < until:
        pass
ApiProcessFigures(Path(sys.argv[1])).enrol()
burn(sys.argv[2])
print("enrolled", flush=True)
for line in sys.stdin:
    burn(line)
    print("spent", flush=True)
"""


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    for seconds in ("0.6", "0"):
        proc = subprocess.Popen(
            [sys.executable, "-c", PROCESS, str(tmp_path), seconds],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        started.append(proc)
    for proc in started:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "enrolled"
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def scrape(registry: CollectorRegistry) -> dict[str, dict[str, float]]:
    """process_* sample name -> pid -> value, from the registry's exposition text."""
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name.startswith("process_"):
                found.setdefault(sample.name, {})[sample.labels["pid"]] = sample.value
    return found


def registry_of(figures: ApiProcessFigures) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(figures)
    return registry


def test_two_processes_have_a_series_each_with_plausible_figures(tmp_path: Path, processes):
    busy, idle = (str(p.pid) for p in processes)
    found = scrape(registry_of(ApiProcessFigures(tmp_path)))
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes"):
        assert set(found[name]) == {busy, idle}, found
    cpu = found["process_cpu_seconds_total"]
    assert cpu[busy] >= 0.5 and cpu[busy] > cpu[idle], cpu  # its own figure, not a sibling's
    for rss in found["process_resident_memory_bytes"].values():
        # A Python interpreter that imported prometheus_client, and not the machine's memory.
        assert 5e6 < rss < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for started in found["process_start_time_seconds"].values():
        assert time.time() - 120 < started <= time.time()
    assert set(found["process_open_fds"]) == {busy, idle}


def test_the_figures_are_read_when_scraped(tmp_path: Path, processes):
    # Nothing in the process writes its figures: the scrape reads what the kernel counted.
    figures = registry_of(ApiProcessFigures(tmp_path))
    idle = processes[1]
    before = scrape(figures)["process_cpu_seconds_total"][str(idle.pid)]
    assert idle.stdin is not None and idle.stdout is not None
    idle.stdin.write("0.4\n")
    idle.stdin.flush()
    assert idle.stdout.readline().strip() == "spent"
    after = scrape(figures)["process_cpu_seconds_total"][str(idle.pid)]
    assert after - before >= 0.35, (before, after)


def test_a_process_that_died_has_no_series_and_its_enrolment_goes(tmp_path: Path, processes):
    figures = ApiProcessFigures(tmp_path)
    killed, alive = processes
    killed.kill()  # no chance to leave: as a crash or the OOM killer would end it
    killed.wait()
    found = scrape(registry_of(figures))
    assert set(found["process_cpu_seconds_total"]) == {str(alive.pid)}
    assert set(found["process_resident_memory_bytes"]) == {str(alive.pid)}
    assert not (tmp_path / f"{killed.pid}{ENROLMENT_SUFFIX}").exists()


def test_a_process_that_leaves_has_no_series(tmp_path: Path):
    figures = ApiProcessFigures(tmp_path)
    figures.enrol()
    assert figures.enrolled() == [os.getpid()]
    figures.leave()
    assert figures.enrolled() == []
    assert scrape(registry_of(figures)) == {}


def test_a_pid_taken_by_a_newer_process_is_not_the_enrolled_one(tmp_path: Path):
    # An enrolment of this pid with another start time: a process that exited, whose pid
    # this one was given.
    (tmp_path / f"{os.getpid()}{ENROLMENT_SUFFIX}").write_text("1")
    # And a file no process wrote: the scrape answers all the same.
    (tmp_path / f"stray{ENROLMENT_SUFFIX}").write_text("1")
    assert scrape(registry_of(ApiProcessFigures(tmp_path))) == {}
    assert list(tmp_path.iterdir()) == []


def test_a_lone_process_enrols_nowhere(monkeypatch: pytest.MonkeyPatch):
    # Its own process_* figures come from prometheus_client's process collector.
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    registry = CollectorRegistry(auto_describe=False)
    assert enrol_api_process(registry) is None
    assert scrape(registry) == {}


def test_the_app_reports_its_processes_while_it_runs(
    published_copy: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    shared = tmp_path / "metrics"
    shared.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(shared))
    app = create_app(published_copy, job_queue=RecordingQueue())
    with TestClient(app, headers=ADMIN) as api:
        text = api.get("/metrics").text
        me = f'pid="{os.getpid()}"'
        assert f"process_cpu_seconds_total{{{me}}}" in text
        assert f"process_resident_memory_bytes{{{me}}}" in text
    assert not list(shared.glob(f"*{ENROLMENT_SUFFIX}")), "the app left without leaving"
