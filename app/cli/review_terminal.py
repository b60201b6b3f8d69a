"""`pfp review` with no subcommand: answer a review queue in the terminal, one text at a
time, over the API (the same routes as the dashboard and any client).

Each class has a key: its number, and its first letter where no other class starts with
it (`s` and `q` stay skip and quit). On a terminal a key press answers at once; from a
pipe or file each line is one answer (a key or a class's full name), which is how tests
and scripts drive it.
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Generator, Iterator, Sequence
from typing import IO, Any

from app.cli.client import ApiError, ServiceClient

SKIP, QUIT = "s", "q"
PAGE = 20


def class_keys(classes: Sequence[str]) -> dict[str, str]:
    """Key -> class: 1, 2, ... and each unambiguous first letter (not s, q or a digit)."""
    keys = {str(n): label for n, label in enumerate(classes, 1)}
    firsts = Counter(label[:1].lower() for label in classes)
    for label in classes:
        first = label[:1].lower()
        if first.isalpha() and firsts[first] == 1 and first not in (SKIP, QUIT):
            keys[first] = label
    return keys


def key_legend(classes: Sequence[str], keys: dict[str, str]) -> str:
    by_class: dict[str, list[str]] = {label: [] for label in classes}
    for key, label in keys.items():
        by_class[label].append(key)
    shown = [f"[{'/'.join(by_class[label])}] {label}" for label in classes]
    return "  ".join([*shown, f"[{SKIP}] skip", f"[{QUIT}] quit"])


def _answers(stream: IO[str], single_keys: bool) -> Generator[str, None, None]:
    """What the person types: one key press at a time on a terminal, else one line."""
    if single_keys:
        import termios
        import tty

        fd = stream.fileno()
        saved = termios.tcgetattr(fd)
        try:
            tty.setcbreak(fd)
            while True:
                key = stream.read(1)
                if key in ("", "\x04"):  # end of input, Ctrl-D
                    return
                yield key
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    for line in stream:
        yield line.strip()


def predictions(item: dict[str, Any]) -> str:
    """What the models said about the item, where the queue knows it."""
    if item["queue"] == "disagreement":
        return (
            f"candidate v{item['candidate_version']} said {item['candidate_label']} · "
            f"champion v{item['champion_version']} said {item['champion_label']}"
        )
    if item.get("predicted_label") is not None:
        return (
            f"v{item['model_version']} said {item['predicted_label']} "
            f"({item['score_kind']} {item['score']:.3f})"
        )
    return ""


class ReviewSession:
    """One person answering one queue (of one job, if given) until it is empty or they quit."""

    def __init__(
        self,
        client: ServiceClient,
        queue: str,
        *,
        job_id: str | None = None,
        annotator: str | None = None,
        stdin: IO[str] | None = None,
        out: IO[str] | None = None,
    ) -> None:
        self.client = client
        self.queue = queue
        self.job_id = job_id
        self.annotator = annotator
        self.stdin = stdin or sys.stdin
        self.out = out or sys.stdout
        self.labeled = self.skipped = 0

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def _progress(self) -> str:
        counts = next(
            q for q in self.client.get("/review/queues")["queues"] if q["queue"] == self.queue
        )
        return f"{counts['labeled']} labeled, {counts['open']} open"

    def _open_items(self) -> list[dict[str, Any]]:
        page = self.client.get(f"/review/queues/{self.queue}/items", limit=PAGE, job_id=self.job_id)
        items: list[dict[str, Any]] = page["items"]
        return items

    def _show(self, item: dict[str, Any], legend: str) -> None:
        self.say()
        self.say(f"── {self.queue} · item {item['id']} · {self._progress()} ──")
        self.say(item["text"])
        said = predictions(item)
        if said:
            self.say(f"  {said}")
        self.say(legend)

    def _send(self, item: dict[str, Any], label: str | None) -> None:
        body: dict[str, Any] = {"via": "cli", "annotator": self.annotator}
        action = "skip" if label is None else "label"
        if label is not None:
            body["label"] = label
        try:
            self.client.post(f"/review/items/{item['id']}/{action}", body)
        except ApiError as exc:
            if exc.status != 409:
                raise
            self.say(f"  (not taken: {exc.message})")  # someone answered it meanwhile
            return
        if label is None:
            self.skipped += 1
            self.say("  skipped")
        else:
            self.labeled += 1

    def run(self) -> int:
        """Answer items until the queue is empty or the person quits; 0 either way."""
        classes: list[str] = self.client.get("/review/queues")["classes"]
        if not classes:
            self.say("No model is active yet, so there are no classes to label with.")
            return 1
        keys = class_keys(classes)
        by_name = {label: label for label in classes}
        single = self.stdin.isatty() and len(classes) <= 9
        legend = key_legend(classes, keys)
        answers = _answers(self.stdin, single)
        shown: set[int] = set()
        with contextlib.closing(answers):
            while True:
                items = [i for i in self._open_items() if i["id"] not in shown]
                if not items:
                    where = f" of job {self.job_id}" if self.job_id else ""
                    self.say(f"\nNothing open in the {self.queue} queue{where}.")
                    break
                for item in items:
                    shown.add(item["id"])
                    self._show(item, legend)
                    answer = self._ask(answers, keys, by_name)
                    if answer == QUIT:
                        self._summary()
                        return 0
                    self._send(item, None if answer == SKIP else answer)
        self._summary()
        return 0

    def _ask(self, answers: Iterator[str], keys: dict[str, str], by_name: dict[str, str]) -> str:
        """The class chosen, SKIP or QUIT (also at the end of the input)."""
        while True:
            print("> ", end="", file=self.out, flush=True)
            typed = next(answers, QUIT)
            if typed in (SKIP, QUIT):
                self.say(typed)
                return typed
            label = keys.get(typed.lower()) or by_name.get(typed)
            if label is not None:
                self.say(label)  # what the key meant, after the prompt
                return label
            self.say(f"  {typed!r} is not a key; the keys are {', '.join(keys)}, s, q")

    def _summary(self) -> None:
        self.say(
            f"\nThis session: {self.labeled} labeled, {self.skipped} skipped. "
            f"The {self.queue} queue: {self._progress()}."
        )
