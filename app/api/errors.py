"""One typed error per failure, mapped to its status code in one place.

Every non-2xx answer, the framework's own included (unknown path, wrong method, a body
that cannot be parsed, an unexpected exception), is JSON `{"error": code, "detail": ...}`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.logs import request_id
from app.core.texts import storable
from app.serving.micro_batcher import ModelOverloaded, NoActiveModel, ShuttingDown
from app.serving.scoring import UnscorableText

log = logging.getLogger(__name__)


class ServiceError(Exception):
    status_code = 500
    code = "internal"
    headers: dict[str, str] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    status_code = 403
    code = "forbidden"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class TooLarge(ServiceError):
    status_code = 413
    code = "too_large"


class Invalid(ServiceError):
    status_code = 422
    code = "invalid"


class Unavailable(ServiceError):
    status_code = 503
    code = "unavailable"
    headers = {"Retry-After": "5"}


def _body(code: str, message: str) -> dict[str, str]:
    return {"error": code, "detail": _encodable(message)}


def _explained(error: Any) -> Any:
    """Pydantic's own refusal of a string Rust cannot hold, said as the service says it."""
    value = error.get("input")
    if error.get("type") == "string_unicode" and isinstance(value, str):
        try:
            storable(value, str((error.get("loc") or ["text"])[-1]))
        except ValueError as exc:
            return {**error, "msg": str(exc)}
    return error


def _encodable(value: Any) -> Any:
    """`value` with every string made encodable as UTF-8 (a lone surrogate becomes '?'), so
    that an answer about bad input never fails to be written itself."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_encodable(k): _encodable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encodable(v) for v in value]
    if isinstance(value, BaseException):
        return _encodable(str(value))
    return value


async def send_error(send: Send, status: int, code: str, detail: str, **extra: str) -> None:
    """The service's error answer written straight to ASGI, for the middlewares that
    answer before (or instead of) the app."""
    body = json.dumps(_body(code, detail) | extra).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# The framework's own refusals, by status: the same shape as the service's.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "overloaded",
}
# What FastAPI says of a body it could not read as JSON (too deeply nested, say).
_UNPARSED_BODY = "There was an error parsing the body"


class InternalErrors:
    """The last line: an exception no handler knew becomes a 500 in the service's shape,
    with the request id to quote and nothing internal, and the connection stays usable
    (Starlette's own 500 re-raises, and the server then drops the keep-alive connection)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            rid = request_id.get()
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # half an answer is out: only closing the connection can say so
            await send_error(
                send,
                500,
                "internal",
                f"an internal error occurred; quote request id {rid}",
                request_id=rid,
            )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(
            _body(exc.code, exc.message), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail)
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        if exc.status_code == 400 and detail == _UNPARSED_BODY:
            code, detail = "malformed_json", "the body could not be parsed as JSON"
        elif exc.status_code == 404 and detail == "Not Found":
            detail = "no such path; the API is described at /docs"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed here"
        return JSONResponse(_body(code, detail), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(UnscorableText)
    async def _unscorable(_request: Request, exc: UnscorableText) -> JSONResponse:
        return JSONResponse(_body("unscorable_text", str(exc)), status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        bad_json = [e for e in errors if e.get("type") == "json_invalid"]
        if bad_json:
            where = bad_json[0].get("ctx", {}).get("error", "")
            return JSONResponse(
                _body("malformed_json", f"the body is not valid JSON: {where}"), 400
            )
        # The offending input is not echoed: it may be what cannot be encoded (a lone
        # surrogate), and the location and the message already say what is wrong.
        detail = [
            _encodable({k: v for k, v in _explained(e).items() if k != "input"}) for e in errors
        ]
        return JSONResponse({"error": "invalid", "detail": jsonable_encoder(detail)}, 422)

    @app.exception_handler(NoActiveModel)
    async def _no_model(_request: Request, exc: NoActiveModel) -> JSONResponse:
        return JSONResponse(
            _body("no_model", str(exc)), status_code=503, headers={"Retry-After": "30"}
        )

    @app.exception_handler(ModelOverloaded)
    async def _overloaded(_request: Request, exc: ModelOverloaded) -> JSONResponse:
        return JSONResponse(
            _body("overloaded", str(exc)), status_code=429, headers={"Retry-After": "1"}
        )

    @app.exception_handler(ShuttingDown)
    async def _shutting_down(_request: Request, exc: ShuttingDown) -> JSONResponse:
        return JSONResponse(
            _body("shutting_down", str(exc)), status_code=503, headers={"Retry-After": "1"}
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeout)
    async def _store_down(_request: Request, exc: Exception) -> JSONResponse:
        # Answering without storing would lose the pseudo-label: refuse instead.
        log.error("store unavailable: %s", exc)
        return JSONResponse(
            _body("store_unavailable", "the store is unavailable; try again shortly"),
            status_code=503,
            headers={"Retry-After": "5"},
        )
