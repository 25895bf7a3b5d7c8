"""Ending an idle agent: the attached agent's way to leave nothing running.

Kubernetes cannot remove an ephemeral container, so an attached agent stops itself
once nobody has used it for ``idle_exit_s`` and none of its work is running (no
recording profile, attached probe or tracing session, no open request such as an
event stream). It stops the way a ``kubectl delete`` would: SIGTERM to itself, which
uvicorn turns into the lifespan shutdown that stops and reaps everything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("agent.idle")


class Activity:
    """Open requests and the time the last one ended (shared with the middleware)."""

    def __init__(self) -> None:
        self.open = 0
        self.last = time.monotonic()

    def idle_for(self) -> float:
        return 0.0 if self.open else time.monotonic() - self.last


class ActivityMiddleware:
    """Counts requests in flight (streams included) except the probes' ``/healthz``."""

    def __init__(self, app: ASGIApp, *, activity: Activity) -> None:
        self.app = app
        self.activity = activity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") == "/healthz":
            await self.app(scope, receive, send)
            return
        self.activity.open += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.activity.open -= 1
            self.activity.last = time.monotonic()


async def watch(
    *,
    activity: Activity,
    idle_exit_s: float,
    busy: Callable[[], bool],
    stop: Callable[[], Awaitable[None]] | None = None,
    poll_s: float = 5.0,
) -> None:
    """Wait until idle for ``idle_exit_s`` with nothing ``busy``, then stop the agent."""
    while True:
        await asyncio.sleep(min(poll_s, idle_exit_s))
        if busy():
            activity.last = time.monotonic()  # running work keeps it alive, then counts
            continue
        if activity.idle_for() >= idle_exit_s:
            log.info(
                "no request and nothing running: the agent exits",
                extra={"fields": {"idle_exit_s": idle_exit_s}},
            )
            if stop is not None:
                await stop()
            else:
                os.kill(os.getpid(), signal.SIGTERM)
            return
