"""Request limits applied before any route runs: body size and content type.

An ASGI middleware rather than a dependency so that an oversized body is refused from its
Content-Length, before it is read, and a chunked one as soon as it passes the limit.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import send_error

_BODY_METHODS = {"POST", "PUT", "PATCH"}


class RequestLimits:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope["headers"]}
        limit = self.max_body_bytes
        raw_length = headers.get(b"content-length")
        try:
            length = int(raw_length) if raw_length is not None else None
        except ValueError:
            await send_error(send, 400, "bad_request", "Content-Length is not a number")
            return
        if length is not None and length > limit:
            await send_error(
                send, 413, "too_large", f"the body has {length} bytes; the limit is {limit}"
            )
            return
        has_body = (length or 0) > 0 or b"transfer-encoding" in headers
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if has_body and not (media == b"application/json" or media.endswith(b"+json")):
            shown = media.decode("latin-1") or "none"
            await send_error(
                send,
                415,
                "unsupported_media_type",
                f"send the body as JSON with 'Content-Type: application/json' (got {shown})",
            )
            return

        # Read the body here, bounded, and replay it: FastAPI turns an error raised while
        # it reads the body into a generic 400, so the limit has to be enforced before.
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > limit:
                await send_error(
                    send, 413, "too_large", f"the body is over the limit of {limit} bytes"
                )
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if media and body:
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as exc:
                await send_error(
                    send,
                    400,
                    "malformed_json",
                    f"the body is not valid UTF-8 (byte {exc.start}: {exc.reason})",
                )
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
