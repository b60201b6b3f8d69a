"""Logging of every process: text or JSON lines (LOG_FORMAT), each carrying a request id.

The request id lives in a context variable. In an API process `RequestIdMiddleware` sets
it per request (the client's X-Request-ID when it is short and safe, else a fresh one) and
sends it back as a response header; in a worker it is the Celery task id. A filter on the
one root handler copies it onto every record, so the lines of uvicorn, Celery, SQLAlchemy
and ours all carry it without any call site passing it along.

Some libraries log through the root logger at INFO what only their developers read: ONNX
Runtime's quantization, run when a version is published, writes a line per tensor it
leaves unquantized. `ThirdPartyChatter` demotes those lines to DEBUG, so an operator's
screen shows the service's own lines and LOG_LEVEL=debug still shows them.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar
from pathlib import PurePath
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import Settings

REQUEST_ID_HEADER = "X-Request-ID"
NO_REQUEST = "-"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
JSON_FIELDS = ["levelname", "name", "request_id", "message"]
# A client's id is echoed into our logs and headers: letters, digits and . _ - only, so it
# cannot forge a log line, inject a header or blow up a log index.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

request_id: ContextVar[str] = ContextVar("request_id", default=NO_REQUEST)


def new_request_id() -> str:
    return uuid.uuid4().hex


def accepted_request_id(offered: str | None) -> str:
    """The client's X-Request-ID if it is safe to log and echo, else a fresh id."""
    if offered and _SAFE_REQUEST_ID.fullmatch(offered):
        return offered
    return new_request_id()


class RequestIdFilter(logging.Filter):
    """Stamps each record with the request id of the context that logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


def make_formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(
            JSON_FIELDS,
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",  # ISO 8601 in UTC, what log stores parse without a hint
            # uvicorn's copy of each message with terminal colour codes: noise in JSON.
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
            json_ensure_ascii=False,
        )
    return logging.Formatter(TEXT_FORMAT)


# Packages (as folders of their source files) whose INFO and WARNING lines on the root
# logger are demoted to DEBUG: (package, subpackage). ONNX Runtime's quantization logs a
# line per tensor it leaves alone and advice to its own developers ("consider running
# pre-processing"); the service records in the version's forms whether int8 was built
# and how it scored, which is what an operator needs.
CHATTY_PACKAGES = (("onnxruntime", "quantization"),)
DEMOTED_LEVELS = (logging.INFO, logging.WARNING)


class ThirdPartyChatter(logging.Filter):
    """On the root logger: INFO and WARNING records that a package of CHATTY_PACKAGES
    logs there through `logging.info` or `logging.warning` become DEBUG records, dropped
    unless the root logs DEBUG. (A filter on a logger sees only the records made on it:
    the service's own loggers, which propagate to the root's handlers, never pass here.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        demoted = record.levelno in DEMOTED_LEVELS
        if not demoted or not _from_chatty_package(record.pathname):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def quiet_third_party_chatter() -> None:
    """Install `ThirdPartyChatter` on the root logger (once, however often called)."""
    root = logging.getLogger()
    if not any(isinstance(f, ThirdPartyChatter) for f in root.filters):
        root.addFilter(ThirdPartyChatter())


def _from_chatty_package(pathname: str) -> bool:
    parts = PurePath(pathname).parts
    return any(pair in zip(parts, parts[1:], strict=False) for pair in CHATTY_PACKAGES)


class ServiceLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stderr handler `configure_logging` installs (a type of its own to find it again)."""


def configure_logging(settings: Settings) -> None:
    """One stderr handler on the root logger, in the configured format; the loggers that
    uvicorn and Celery set up for themselves are routed to it, so every line looks alike.
    Idempotent: a second call replaces the handler instead of doubling the lines."""
    handler = ServiceLogHandler()
    handler.setFormatter(make_formatter(settings.log_format))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        # Ours from an earlier call, or the plain one `logging.basicConfig` installs; other
        # handlers (a test runner's capture, a file an operator added) stay.
        if type(old) in (ServiceLogHandler, logging.StreamHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    quiet_third_party_chatter()
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


class RequestIdMiddleware:
    """Gives each HTTP request an id: in the context (for log lines) and in the response's
    X-Request-ID header (for the client to quote)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                offered = value.decode("latin-1")
                break
        rid = accepted_request_id(offered)
        token = request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[Any] = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
