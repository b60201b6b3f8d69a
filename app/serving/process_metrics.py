"""CPU and memory of every API process behind one port, for /metrics.

A lone API process reports its own `process_*` figures through prometheus_client's process
collector. Several API processes (API_PROCESSES > 1) share their metrics through
prometheus_client's multiprocess mode, which carries only what the processes write to
PROMETHEUS_MULTIPROC_DIR: CPU and memory are not among them, so the process answering a
scrape would report none. Here each API process enrols in that folder at start (a small
file named by its pid, holding its start time), and whichever process answers a scrape
reads the figures of every enrolled process from /proc at that moment: the process
collector's own series, one per `pid`. Read at scrape time rather than written
periodically, they are never stale, and a process that has exited, cleanly or not, is
gone from /proc: its series disappears and its enrolment is removed. The start time tells
a new process that was given a dead one's pid from the process that enrolled.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

ENROLMENT_SUFFIX = ".api-process"
# The families of prometheus_client's process collector, each here with a `pid` label.
FAMILIES = {
    "process_cpu_seconds": "counter",  # process_cpu_seconds_total
    "process_resident_memory_bytes": "gauge",
    "process_virtual_memory_bytes": "gauge",
    "process_start_time_seconds": "gauge",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
}


def _family(name: str, help_text: str) -> CounterMetricFamily | GaugeMetricFamily:
    if FAMILIES[name] == "counter":
        return CounterMetricFamily(name, help_text, labels=["pid"])
    return GaugeMetricFamily(name, help_text, labels=["pid"])


def _returning(pid: int) -> Callable[[], int]:
    return lambda: pid


class ApiProcessFigures(Collector):
    """The `process_*` figures of every API process enrolled in `folder`, labeled by pid."""

    def __init__(self, folder: Path, proc: Path = Path("/proc")) -> None:
        self.folder = folder
        self.proc = proc

    def _start_ticks(self, pid: int) -> str | None:
        """When `pid` started, in clock ticks since boot (/proc/PID/stat, field 22); None
        when no such process runs."""
        try:
            stat = (self.proc / str(pid) / "stat").read_bytes()
        except OSError:
            return None
        # The command name (field 2) is in parentheses and may hold spaces or parentheses.
        return stat.rsplit(b")", 1)[-1].split()[19].decode()

    def enrol(self, pid: int | None = None) -> None:
        """Put this process (or `pid`) on the roll that scrapes read."""
        pid = os.getpid() if pid is None else pid
        ticks = self._start_ticks(pid)
        if ticks is None:
            return  # no /proc (not Linux): nothing could be read for it anyway
        path = self.folder / f"{pid}{ENROLMENT_SUFFIX}"
        draft = path.with_suffix(".draft")
        draft.write_text(ticks)
        draft.replace(path)  # a scrape never reads a half-written enrolment

    def leave(self, pid: int | None = None) -> None:
        """Take this process (or `pid`) off the roll, as it shuts down."""
        pid = os.getpid() if pid is None else pid
        (self.folder / f"{pid}{ENROLMENT_SUFFIX}").unlink(missing_ok=True)

    def enrolled(self) -> list[int]:
        """The pids of the enrolled processes that still run, in order; the enrolments of
        those that exited (or whose pid a newer process took) are removed."""
        alive = []
        for path in self.folder.glob(f"*{ENROLMENT_SUFFIX}"):
            name = path.name.removesuffix(ENROLMENT_SUFFIX)
            try:
                enrolled_at = path.read_text()
            except OSError:
                continue  # left at this moment
            if name.isdigit() and self._start_ticks(int(name)) == enrolled_at:
                alive.append(int(name))
            else:
                with contextlib.suppress(OSError):  # a scrape answers whatever happens here
                    path.unlink()
        return sorted(alive)

    def describe(self) -> Iterator[Metric]:
        """Every family `collect` yields, empty."""
        for name in FAMILIES:
            yield _family(name, "")

    def collect(self) -> Iterator[Metric]:
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for pid in self.enrolled():
            one = ProcessCollector(pid=_returning(pid), proc=str(self.proc), registry=None)
            for found in one.collect():
                if found.name not in FAMILIES:
                    continue
                family = families.setdefault(found.name, _family(found.name, found.documentation))
                for sample in found.samples:
                    family.add_metric([str(pid)], sample.value)
        yield from families.values()


def enrol_api_process(registry: CollectorRegistry) -> ApiProcessFigures | None:
    """In multiprocess mode: enrol this API process and let `registry` report the figures
    of every enrolled one; None for a lone process, whose own figures the process collector
    already reports."""
    shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not shared:
        return None
    figures = ApiProcessFigures(Path(shared))
    figures.enrol()
    registry.register(figures)
    return figures
