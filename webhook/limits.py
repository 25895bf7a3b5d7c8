"""Request body size limit, as pure ASGI middleware in front of everything.

The body is read here (the handlers read it whole anyway) and replayed to the app;
past `max_bytes` the request is answered 413 with a JSON detail. A declared
Content-Length over the limit is refused before reading anything; a body that
grows over the limit is drained (bounded) first so the client can read the 413
instead of a connection reset.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DRAIN_FACTOR: Final = 4
"""Read at most this many times the limit before giving up and closing."""


class BodyLimit:
    def __init__(
        self, app: ASGIApp, *, max_bytes: int, on_reject: Callable[[], None] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._reject(send, declared)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                # The client went away: let the app see it as usual.
                await self.app(scope, _replay([message]), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = bool(message.get("more_body", False))
            if size > self.max_bytes:
                while more and size <= DRAIN_FACTOR * self.max_bytes:
                    message = await receive()
                    size += len(message.get("body", b""))
                    more = message["type"] == "http.request" and bool(message.get("more_body"))
                await self._reject(send, size)
                return
            chunks.append(chunk)
        body = b"".join(chunks)
        await self.app(
            scope,
            _replay([{"type": "http.request", "body": body, "more_body": False}], receive),
            send,
        )

    async def _reject(self, send: Send, size: int) -> None:
        if self.on_reject is not None:
            self.on_reject()
        detail = (
            f"the request body is too large ({size} bytes or more); the limit is "
            f"{self.max_bytes} bytes (TRACECAR_WEBHOOK_MAX_BODY_BYTES)"
        )
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    """A receive() that returns `messages` first, then defers to `then` (disconnects)."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive
