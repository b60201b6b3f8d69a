"""Progress of long commands on stderr: a bar on a terminal, plain lines elsewhere.

Off a terminal (a cron job, CI, `2> log`) a bar would be either silent or a stream of
carriage returns; instead one line is printed when the stage changes and about every
tenth of the way (every 10,000 units when the total is unknown), so a log shows the
command is alive and how far it got.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

UNKNOWN_TOTAL_STEP = 10_000


class PlainProgress:
    """The part of tqdm's interface the commands use, as plain lines."""

    def __init__(
        self,
        total: float | None = None,
        desc: str = "",
        unit: str = "",
        file: IO[str] | None = None,
        **_ignored: Any,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.file = file or sys.stderr
        self.n: float = 0
        self.postfix = ""
        self._printed_step = -1
        self._last = ""
        self._started = time.monotonic()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        step = int(10 * self.n / self.total) if self.total else int(self.n // UNKNOWN_TOTAL_STEP)
        if step > self._printed_step:
            self._printed_step = step
            self._print()

    def set_description(self, desc: str) -> None:
        if desc != self.desc:
            self.desc = desc
            self._print()

    def set_postfix_str(self, postfix: str) -> None:
        if postfix != self.postfix:
            self.postfix = postfix
            self._print()

    def close(self) -> None:
        self._print()

    def _print(self) -> None:
        unit = self.unit.strip()
        if self.total:
            done = f"{100 * self.n / self.total:.0f}%"
            if unit:
                done += f" ({self.n:g}/{self.total:g} {unit})"
        else:
            done = f"{self.n:g} {unit}".strip()
        status = f", {self.postfix}" if self.postfix else ""
        line = f"{self.desc}: {done}{status}"
        if line != self._last:  # a line only when something changed
            self._last = line
            elapsed = time.monotonic() - self._started
            print(f"{line} [{elapsed:.0f} s]", file=self.file, flush=True)


def progress_bar(**kwargs: Any) -> Any:
    """A tqdm bar on a terminal; PlainProgress lines when stderr is a file or a pipe."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(file=sys.stderr, dynamic_ncols=True, **kwargs)
    return PlainProgress(**kwargs)
