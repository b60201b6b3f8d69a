"""An HTTP client for the service's API, used by the operator commands of `pfp`.

The operator commands go through the API, never straight to the store, so they work
against a remote deployment and pass the same validation, keys and model swap as any
other client. Failures become two exceptions the CLI prints without a traceback:
`ApiError` (the API answered with an error) and `ServiceUnreachable` (nothing answered).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx

from app.core.config import Settings
from app.core.security import key_file

# Where the client is pointed from the environment. These belong to the client, not to
# the service, so they are read here, once, rather than in the service's Settings.
URL_VARIABLE = "PFP_URL"
KEY_VARIABLE = "PFP_API_KEY"


class ClientError(Exception):
    """A failure the CLI reports as one message and an exit status."""

    exit_status = 1


class ApiError(ClientError):
    """The API answered with an error status; `message` is what it said."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after


class ServiceUnreachable(ClientError):
    exit_status = 3


def default_url(settings: Settings) -> str:
    """PFP_URL, else this machine's service at the HOST and PORT settings."""
    if url := os.environ.get(URL_VARIABLE, "").strip():
        return url
    # A wildcard bind address is not one a client can connect to.
    host = "127.0.0.1" if settings.host in ("", "0.0.0.0", "::") else settings.host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def default_api_key(settings: Settings) -> str | None:
    """PFP_API_KEY, else the first ADMIN_API_KEYS key, else the generated key kept in
    DATA_DIR (read only: a client never creates one)."""
    if key := os.environ.get(KEY_VARIABLE, "").strip():
        return key
    configured = [k.strip() for k in settings.admin_api_keys.split(",") if k.strip()]
    if configured:
        return configured[0]
    try:
        return key_file(settings).read_text().strip() or None
    except OSError:
        return None


def _message(response: httpx.Response) -> str:
    """The API's own words: `detail` of `{"error", "detail"}`, 422 lists flattened."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        parts = []
        for error in detail:
            if isinstance(error, dict):
                where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body",))
                parts.append(f"{where}: {error.get('msg', error)}" if where else error.get("msg"))
            else:
                parts.append(str(error))
        return "; ".join(str(p) for p in parts)
    return str(detail)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


class ServiceClient:
    """The API at `base_url`, with an admin (or label) key."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.has_key = bool(api_key)
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _unreachable(self, exc: httpx.HTTPError) -> ServiceUnreachable:
        return ServiceUnreachable(
            f"could not reach the service at {self.base_url} ({type(exc).__name__}: {exc}).\n"
            "Start it with `pfp serve` (everything on this machine) or `pfp api`, or point "
            f"--url or {URL_VARIABLE} at a running one."
        )

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        message = _message(response)
        if response.status_code == 401:
            message += (
                f"\n(the key comes from --api-key, {KEY_VARIABLE}, the ADMIN_API_KEYS setting "
                "or the DATA_DIR/admin_api_key file, in that order)"
            )
        raise ApiError(response.status_code, message, _retry_after(response))

    def request(self, method: str, path: str, *, retries: int = 0, **kwargs: Any) -> httpx.Response:
        """Send one request; 429 and 503 (the API refused and stored nothing) are retried
        `retries` times after the Retry-After the API asked for."""
        for attempt in range(retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from None
            if response.status_code in (429, 503) and attempt < retries:
                time.sleep(min(_retry_after(response) or 1.0, 30.0))
                continue
            return self._check(response)
        raise AssertionError("unreachable")  # the loop always returns or raises

    def get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self.request("GET", path, params=clean).json()

    def post(self, path: str, body: Any = None, *, retries: int = 0) -> Any:
        if body is None:
            return self.request("POST", path, retries=retries).json()
        return self.request("POST", path, json=body, retries=retries).json()

    def stream_lines(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """The JSON objects of a JSON-lines answer, one at a time as they arrive."""
        clean = {k: v for k, v in params.items() if v is not None}
        try:
            # A selective filter may scan long between matching rows: wait longer for them.
            timeout = httpx.Timeout(60.0, read=600.0)
            with self._http.stream("GET", path, params=clean, timeout=timeout) as response:
                if not response.is_success:
                    response.read()
                    self._check(response)
                for line in response.iter_lines():
                    if line:
                        yield json.loads(line)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
