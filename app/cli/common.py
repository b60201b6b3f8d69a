"""What the operator commands share: the connection to the API, batching of requests,
output formats, tables, and how a command's parser is built.

Each command talks to a running API over HTTP (`app/cli/client.py`), so it works the same
against this machine and a remote deployment, with the API's validation and keys. Data
goes to stdout or a file; progress bars (on a terminal) and summaries go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from app.cli.client import (
    KEY_VARIABLE,
    URL_VARIABLE,
    ClientError,
    ServiceClient,
    default_api_key,
    default_url,
)
from app.core.config import get_settings
from app.core.progress import progress_bar
from app.core.times import iso_utc

# A quarter of the API's default MAX_BODY_BYTES, so requests stay well under it.
MAX_REQUEST_BYTES = 1_000_000


class UsageError(ClientError):
    """A bad argument or input file: nothing was sent."""

    exit_status = 2


Formatter = argparse.RawDescriptionHelpFormatter


def connect(args: argparse.Namespace) -> ServiceClient:
    settings = get_settings()
    return ServiceClient(
        args.url or default_url(settings), args.api_key or default_api_key(settings)
    )


def progress(**kwargs: Any) -> Any:
    return progress_bar(**kwargs)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def batches(
    items: Iterable[Any], max_items: int, max_bytes: int = MAX_REQUEST_BYTES
) -> Iterator[list[Any]]:
    """Consecutive batches of at most `max_items` items and about `max_bytes` of JSON."""
    batch: list[Any] = []
    size = 0
    for item in items:
        item_size = len(json.dumps(item, ensure_ascii=False).encode()) + 2
        if batch and (len(batch) >= max_items or size + item_size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item_size
    if batch:
        yield batch


def output_format(explicit: str | None, output: str | None, allowed: tuple[str, ...]) -> str:
    """--format if given, else the output file's extension, else JSON lines."""
    if explicit:
        return explicit
    if not output:
        return "jsonl"
    suffix = Path(output).suffix.lower().lstrip(".")
    suffix = {"ndjson": "jsonl", "pq": "parquet"}.get(suffix, suffix)
    if suffix not in allowed:
        raise UsageError(
            f"cannot tell the format of {output!r} from its extension: "
            f"name it .{' / .'.join(allowed)} or pass --format"
        )
    return suffix


def when(stamp: str | None) -> str:
    """A time from the API as the CLI shows every time: ISO 8601, UTC, `Z`."""
    return iso_utc(datetime.fromisoformat(stamp.replace("Z", "+00:00"))) if stamp else "-"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def connection_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--url",
        help=f"the API's base URL (default: ${URL_VARIABLE}, else http://127.0.0.1:PORT)",
    )
    group.add_argument(
        "--api-key",
        help=f"admin API key (default: ${KEY_VARIABLE}, else the first ADMIN_API_KEYS key, "
        "else the generated DATA_DIR/admin_api_key)",
    )
    return parent


def leaf(
    sub: Any,
    name: str,
    func: Callable[[argparse.Namespace], int | None],
    help: str,
    epilog: str,
    parents: list[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        epilog=epilog,
        formatter_class=Formatter,
        parents=parents,
    )
    parser.set_defaults(func=func)
    return parser
