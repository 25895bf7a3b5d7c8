"""The agent's start-up: its port answers within a fraction of a second, the app loads behind it.

Owns the order of things between ``tracecar-agent`` starting and the app serving. In a
labelled pod the agent is a native sidecar: the kubelet starts the app's containers only
once the agent's startup probe passes, so every second the agent spends before it
answers is added to the app's start. Importing FastAPI and every capability takes about
half a second of CPU on an idle node and two on a busy one, and none of it is needed
to say "up". So :class:`Boot`, the ASGI app uvicorn serves:

1. at uvicorn's start-up, starts the pod's LTTng session daemon (apps with LTTng-UST
   register with it as they start, so it must be up before them; it answers in about
   30 ms) and declares itself started: the port answers from here on;
2. answers ``GET /healthz`` with ``{"status": "starting"}`` (200) while the app loads,
   which is what the startup probe waits for;
3. imports the app in a worker thread (the loop keeps answering), builds it, runs its
   lifespan (the job store, each capability's start) and from then on hands it every
   request. A request that arrives before that waits for it (up to
   :data:`READY_WAIT_S`), it is not refused.

If the app cannot be built or its lifespan fails to start, ``/healthz`` answers 503 with
the reason (the liveness probe restarts the container), every other request gets a 503
saying why, and the server is asked to exit with :data:`EXIT_CONFIG` (a token that
cannot be used) or :data:`EXIT_STARTUP`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from agent.lttng import SessionDaemon

log = logging.getLogger("agent.boot")

READY_WAIT_S: Final = 120.0
"""How long a request that arrived during the start waits for the app."""
EXIT_CONFIG: Final = 2
"""The exit status for a configuration the agent cannot serve with (an unusable token)."""
EXIT_STARTUP: Final = 3
"""The exit status when the app failed to load or start (uvicorn's own for a failed
lifespan start-up)."""


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD: Final = -1
_M_ARENA_MAX: Final = -8


def tune_malloc() -> bool:
    """One malloc arena for the agent's threads, and freed memory handed back above 128 KiB.

    glibc gives a thread that allocates its own arena: the app's import in a worker thread
    leaves about 1 MB of the idle agent's memory in a second one. The agent's threads are
    few and mostly wait on the GIL, so one arena costs no contention worth having; and a
    fixed trim threshold keeps glibc from raising it after a large render's free (the
    default grows it up to 32 MB, memory an idle sidecar then keeps). Only this process:
    its children (perf, bpftrace) keep glibc's defaults. False where there is no glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, 1)) and bool(mallopt(_M_TRIM_THRESHOLD, 128 * 1024))


class ConfigError(Exception):
    """A configuration the app refused to start with; the message says what to fix."""


Loader = Callable[[Settings, dict[str, object], Callable[[], None]], ASGIApp]


def load_app(
    settings: Settings, prestarted: dict[str, object], request_exit: Callable[[], None]
) -> FastAPI:
    """Import and build the app (the slow part, run in a worker thread)."""
    # FastAPI imports pydantic.v1 (1.5 MB of the idle agent, 16 ms) only to refuse v1
    # models, of which the agent has none; when that import fails, FastAPI's own check
    # answers "not a v1 model" (fastapi._compat.shared.is_pydantic_v1_model_class).
    sys.modules.setdefault("pydantic.v1", None)  # type: ignore[arg-type]
    from agent.app import create_app
    from agent.auth import TokenConfigError

    try:
        app = create_app(settings, prestarted=prestarted)
    except (TokenConfigError, OSError) as e:
        # A token that cannot be used (or written) is a configuration error: say so
        # and stop, rather than serve without one. The message never holds the token.
        raise ConfigError(str(e)) from e
    # How the idle watcher (attached agents) ends the agent: the server's own exit.
    app.state.request_exit = request_exit
    return app


async def start_sessiond(settings: Settings) -> SessionDaemon | None:
    """The pod's LTTng session daemon, before the app (and so before the app's
    containers: they start when the startup probe passes). Never fatal: the LTTng
    capability says why it is unavailable, as it did when it started the daemon itself."""
    if settings.image_variant == "core":
        return None  # the core image has no LTTng (agent.variant)
    from agent.lttng import build_daemon

    daemon = build_daemon(settings)
    try:
        await daemon.start()
    except Exception as e:  # the service reports the daemon's state; the agent serves
        log.warning("starting lttng-sessiond early failed", extra={"fields": {"error": str(e)}})
        return None
    return daemon


class Boot:
    """The ASGI app uvicorn serves: the real app once it is loaded, ``/healthz`` before."""

    def __init__(
        self,
        settings: Settings,
        *,
        request_exit: Callable[[], None],
        load: Loader = load_app,
        prestart: Callable[[Settings], Awaitable[SessionDaemon | None]] = start_sessiond,
    ) -> None:
        self.settings = settings
        self.request_exit = request_exit
        self.exit_status = 0
        self._load = load
        self._prestart = prestart
        self._app: ASGIApp | None = None
        self._failed: str | None = None
        self._ready = asyncio.Event()
        self._loader: asyncio.Task[None] | None = None
        self._lifespan_in: asyncio.Queue[Message] = asyncio.Queue()
        self._lifespan_out: asyncio.Queue[Message] = asyncio.Queue()
        self._lifespan: asyncio.Future[None] | None = None
        self._sessiond: SessionDaemon | None = None
        self.started = time.monotonic()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._serve_lifespan(receive, send)
            return
        app = self._app
        if app is None:
            if scope["type"] == "http" and scope["path"] == "/healthz":
                await self._healthz(scope, receive, send)
                return
            app = await self._wait_for_app()
            if app is None:
                await self._refuse(scope, receive, send)
                return
        await app(scope, receive, send)

    # --- requests before the app is there ---------------------------------------------
    async def _healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._failed is not None:
            answer = JSONResponse({"status": "failed", "detail": self._failed}, status_code=503)
        else:
            answer = JSONResponse({"status": "starting"})
        await answer(scope, receive, send)

    async def _wait_for_app(self) -> ASGIApp | None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), READY_WAIT_S)
        return self._app

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        why = self._failed or f"the agent is still starting after {READY_WAIT_S:g} s"
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1013, "reason": why[:120]})
        else:
            await JSONResponse({"detail": why}, status_code=503)(scope, receive, send)

    # --- the lifespan: ours at once, the app's once it is loaded ------------------------
    async def _serve_lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        self._sessiond = await self._prestart(self.settings)
        self._loader = asyncio.create_task(self._load_and_start(), name="agent-load")
        log.info(
            "serving; loading the app",
            extra={"fields": {"after_s": round(time.monotonic() - self.started, 3)}},
        )
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        if message["type"] == "lifespan.shutdown":
            await self._shutdown()
            await send({"type": "lifespan.shutdown.complete"})

    async def _load_and_start(self) -> None:
        prestarted: dict[str, object] = {}
        if self._sessiond is not None:
            prestarted["lttng"] = self._sessiond
        try:
            app = await asyncio.to_thread(self._load, self.settings, prestarted, self.request_exit)
        except ConfigError as e:
            self._fail(str(e), status=EXIT_CONFIG)
            return
        except Exception as e:
            log.exception("the app failed to load")
            self._fail(f"the app failed to load: {e}", status=EXIT_STARTUP)
            return
        self._lifespan = asyncio.ensure_future(
            app(
                {
                    "type": "lifespan",
                    "asgi": {"version": "3.0", "spec_version": "2.0"},
                    "state": {},
                },
                self._lifespan_in.get,
                self._lifespan_out.put,
            )
        )
        await self._lifespan_in.put({"type": "lifespan.startup"})
        reply = await self._lifespan_reply()
        if reply.get("type") != "lifespan.startup.complete":
            self._fail(
                f"the app failed to start: {reply.get('message') or 'see the log'}",
                status=EXIT_STARTUP,
            )
            return
        self._app = app
        self._ready.set()
        log.info(
            "the app is serving",
            extra={"fields": {"after_s": round(time.monotonic() - self.started, 3)}},
        )

    async def _lifespan_reply(self) -> Message:
        """The app's answer to a lifespan message, or a failure if its lifespan ended."""
        assert self._lifespan is not None
        got = asyncio.ensure_future(self._lifespan_out.get())
        either: set[asyncio.Future[Any]] = {got, self._lifespan}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if got.done():
            return got.result()
        got.cancel()
        error = self._lifespan.exception() if not self._lifespan.cancelled() else None
        return {"type": "lifespan.failed", "message": str(error) if error else "it ended"}

    def _fail(self, why: str, *, status: int) -> None:
        log.error("the agent cannot serve", extra={"fields": {"reason": why}})
        self._failed = why
        self.exit_status = status
        self._ready.set()  # waiting requests get their 503 now
        self.request_exit()

    async def _shutdown(self) -> None:
        if self._loader is not None and not self._loader.done():
            # A shutdown during the load: let the load finish (a thread cannot be
            # cancelled), then stop what it started.
            with contextlib.suppress(Exception):
                await self._loader
        if self._lifespan is not None and not self._lifespan.done():
            await self._lifespan_in.put({"type": "lifespan.shutdown"})
            await self._lifespan_reply()
            with contextlib.suppress(Exception):
                await self._lifespan
        elif self._sessiond is not None:
            # The app never took the daemon over: it is still ours to stop.
            await self._sessiond.stop()
