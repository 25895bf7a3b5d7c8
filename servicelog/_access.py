"""The access log: one line per HTTP request, as ASGI middleware around the app.

Replaces uvicorn's own access log (run uvicorn with ``access_log=False``). It logs the
path only, never the query string or any header: tokens travel in ``Authorization``
headers and could be put in a query string by a careless client.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servicelog._handler import emit

ACCESS_FIELDS: Final = ("method", "path", "status", "duration_ms", "client")
"""The fields of every access line, after the base keys."""


class AccessLog:
    def __init__(self, app: ASGIApp, *, logger: str) -> None:
        self.app = app
        self.logger = logging.getLogger(logger)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: int | None = None

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except BaseException:
            status = status or 500
            raise
        finally:
            client = scope.get("client")
            emit(
                self.logger,
                "request",
                {
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,  # None: the client left before an answer
                    "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                    "client": client[0] if client else None,
                },
            )
