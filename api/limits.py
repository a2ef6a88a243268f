"""ASGI middleware in front of every route: refuse bodies over MAX_BODY_BYTES before (or while) reading them."""

from __future__ import annotations

import json

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, error_body

_DRAIN_TIMEOUT_S = 5.0


class BodySizeLimit:
    """413 from `Content-Length` without reading the body; a chunked body is counted as it arrives."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # Lingering close, as nginx does: a client still uploading when the server closes gets a TCP reset
        # and loses the 413. Bodies up to this size are read and thrown away (never held) before answering.
        self._drain_cap = max(4 * max_bytes, 8 * 1024 * 1024)

    async def _discard(self, receive: Receive) -> None:
        with anyio.move_on_after(_DRAIN_TIMEOUT_S):
            while True:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            if declared <= self._drain_cap:
                await self._discard(receive)
            await self._refuse(send)
            return
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Raised inside the route's body read; the ApiError handler turns it into the 413.
                    raise ApiError(413, "body_too_large", self._message())
            return message

        return wrapped

    def _message(self) -> str:
        return f"The request body exceeds the limit of {self.max_bytes} bytes."

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(error_body("body_too_large", self._message())).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        # Close the connection: the unread body would otherwise be parsed as the next request.
        headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
