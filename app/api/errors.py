"""One typed error per failure, mapped to its status code in one place."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.serving.model_server import ModelOverloaded, NoActiveModel, ShuttingDown

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
    return {"error": code, "detail": message}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(
            _body(exc.code, exc.message), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        bad_json = [e for e in errors if e.get("type") == "json_invalid"]
        if bad_json:
            where = bad_json[0].get("ctx", {}).get("error", "")
            return JSONResponse(
                _body("malformed_json", f"the body is not valid JSON: {where}"), 400
            )
        return JSONResponse({"error": "invalid", "detail": jsonable_encoder(errors)}, 422)

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
