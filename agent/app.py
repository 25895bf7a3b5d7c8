"""The agent's FastAPI application: routers, error handlers and lifespan.

:func:`create_app` is the only place the pieces meet. The lifespan loads the job
store (sweeping a crashed run's leftovers), starts each capability's service,
and on shutdown (SIGTERM included: uvicorn turns it into a lifespan shutdown)
stops running work, keeping what was recorded, and reaps every child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from agent import (
    __version__,
    _proc,
    dotnet,
    dumps,
    idle,
    lttng,
    memory,
    openapi,
    probes,
    procfs,
    profiling,
    sinks,
    stacks,
    variant,
)
from agent.auth import load_access, remove_generated, require_token
from agent.errors import AgentError, Conflict, Unauthorized, Unavailable, from_tool
from agent.jobs import JobStore
from agent.metrics import Metrics
from agent.registry import Capability, Context, Registration, build_all
from agent.routers import (
    capabilities,
    health,
    processes,
    profile_diff,
    profiles,
    recorder,
    triggers,
    uploads,
)
from agent.routers import dotnet as dotnet_routes
from agent.routers import dumps as dump_routes
from agent.routers import lttng as lttng_routes
from agent.routers import memory as memory_routes
from agent.routers import metrics as metrics_routes
from agent.routers import probes as probe_routes
from agent.routers import stacks as stack_routes
from agent.settings import Settings, get_settings

log = logging.getLogger("agent")

CAPABILITIES: tuple[Registration, ...] = (
    Registration("profiling", lambda c: profiling.Service(c.settings, c.jobs, metrics=c.metrics)),
    Registration(
        "recorder",
        lambda c: profiling.FlightRecorder(
            max_retain_s=c.settings.recorder_max_retain_s, max_bytes=c.settings.recorder_max_bytes
        ),
    ),
    Registration(
        "triggers",
        lambda c: profiling.Triggers(
            c.get("profiling", profiling.Service), max_triggers=c.settings.max_triggers
        ),
    ),
    Registration("probes", lambda c: probes.Service(c.settings, metrics=c.metrics)),
    Registration(
        "lttng",
        lambda c: lttng.Service(
            c.settings, metrics=c.metrics, daemon=c.prestarted_as("lttng", lttng.SessionDaemon)
        ),
    ),
    Registration("stacks", lambda c: stacks.Stacks(timeout_s=c.settings.stack_timeout_s)),
    Registration("dotnet", lambda c: dotnet.Service(c.jobs, registry=c.metrics.registry)),
    Registration("memory", lambda c: memory.Service()),
    Registration(
        "dumps",
        lambda c: dumps.Service(
            c.jobs,
            max_storage_bytes=c.settings.max_storage_bytes,
            memory_service=c.get("memory", memory.Service),
        ),
    ),
)
"""Every capability, in start order (stopped in reverse; :mod:`agent.registry`).
A new one is a package with a service of that shape, its router, and one line here."""


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            where = err.get("loc", ("body", "?"))[-1]
            reason = (err.get("ctx") or {}).get("error", "malformed")
            parts.append(f"the request body is not valid JSON (at character {where}: {reason})")
            continue
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _busy(app: FastAPI) -> bool:
    """Work that keeps an idle agent alive: a recording, an attached probe, a session."""
    return any(svc.busy() for svc in app.state.capabilities.values())


def _exit_request(app: FastAPI) -> Callable[[], Awaitable[None]] | None:
    """How the idle watcher ends the agent: the server's own exit when ``serve`` set
    one, else (no server we know of) a SIGTERM to ourselves."""
    request = getattr(app.state, "request_exit", None)
    if request is None:
        return None

    async def stop() -> None:
        request()

    return stop


async def _start_continuous(app: FastAPI) -> None:
    """TRACECAR_AGENT_CONTINUOUS=true: the flight recorder on the whole pod, pushed every
    interval. A failure is logged and shown in /recorder, never an agent that won't start."""
    try:
        app.state.sinks.require("pyroscope")
        await app.state.recorder.record(profiling.RecorderRequest())
        app.state.sinks.start_continuous(app.state.recorder)
        log.info(
            "continuous profiling of the pod",
            extra={
                "fields": {
                    "frequency_hz": app.state.recorder.frequency_hz,
                    "interval_s": app.state.settings.continuous_interval_s,
                }
            },
        )
    except AgentError as e:
        log.error("continuous profiling did not start", extra={"fields": {"error": e.detail}})


def create_app(
    settings: Settings | None = None, *, prestarted: Mapping[str, object] | None = None
) -> FastAPI:
    """The app. ``prestarted``: what the boot started before the app was loaded, by
    capability name, for each to adopt (:mod:`agent.boot`)."""
    settings = settings or get_settings()
    activity = idle.Activity()
    # Fixed before anything is served: a token is required unless auth=none says otherwise.
    access = load_access(
        auth=settings.auth,
        token=settings.token.get_secret_value() if settings.token else None,
        token_file=settings.token_file,
        generated_token_file=settings.generated_token_file,
    )

    metrics = Metrics()
    jobs = JobStore(settings.data_dir, max_storage_bytes=settings.max_storage_bytes)
    # Built here, started by the lifespan: /capabilities can describe them before it runs.
    built = build_all(
        CAPABILITIES,
        Context(settings=settings, jobs=jobs, metrics=metrics, prestarted=dict(prestarted or {})),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        jobs.load()
        _proc.add_observer(metrics.observe_tool)
        started: list[Capability] = []
        watcher: asyncio.Task[None] | None = None
        procfs.set_container_names(settings.container_names)
        try:
            for svc in built.values():
                await svc.start()
                started.append(svc)
            await app.state.sinks.start()
            if settings.continuous:
                await _start_continuous(app)
            if settings.idle_exit_s is not None:
                watcher = asyncio.create_task(
                    idle.watch(
                        activity=activity,
                        idle_exit_s=settings.idle_exit_s,
                        busy=lambda: _busy(app),
                        stop=_exit_request(app),
                    )
                )
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await app.state.triggers.stop()  # first: no new profile during the shutdown
            await app.state.sinks.stop_continuous()  # the last seconds, before the ring goes
            await app.state.recorder.stop()
            await jobs.shutdown()
            # Then what finished is published and the spools get the flush budget.
            await app.state.sinks.stop()
            # Every capability, newest first (those above again: stopping twice is a no-op).
            for svc in reversed(started):
                try:
                    await svc.stop()
                except Exception:
                    log.exception(
                        "stopping failed", extra={"fields": {"capability": type(svc).__module__}}
                    )
            await _proc.terminate_all()
            _proc.remove_observer(metrics.observe_tool)
            remove_generated(access)

    app = FastAPI(
        title="tracecar agent",
        version=__version__,
        lifespan=lifespan,
        description="Profile and trace the processes of this pod: perf, uprobes, LTTng.",
    )
    app.state.settings = settings
    app.state.activity = activity
    app.state.metrics = metrics
    app.state.jobs = jobs
    app.state.sinks = sinks.Sinks(settings, metrics=metrics)
    app.state.capabilities = built
    for name, svc in built.items():
        setattr(app.state, name, svc)  # what each router's dependency reads
    openapi.install(app)  # the 405 answer the document promises
    app.state.access = access
    app.dependency_overrides[get_settings] = lambda: settings
    app.add_middleware(idle.ActivityMiddleware, activity=activity)

    _install_error_handlers(app, settings)

    protected = [Depends(require_token)]
    app.include_router(health.router)
    app.include_router(metrics_routes.router)  # its own TokenDep: the same rule as the rest
    app.include_router(capabilities.router, dependencies=protected)
    app.include_router(processes.router, dependencies=protected)
    app.include_router(stack_routes.router, dependencies=protected)
    app.include_router(memory_routes.router, dependencies=protected)
    app.include_router(profile_diff.router, dependencies=protected)  # before /profiles/{id}
    app.include_router(profiles.router, dependencies=protected)
    app.include_router(triggers.router, dependencies=protected)
    app.include_router(recorder.router, dependencies=protected)
    app.include_router(probe_routes.router, dependencies=protected)
    app.include_router(lttng_routes.router, dependencies=protected)
    app.include_router(dotnet_routes.router, dependencies=protected)
    app.include_router(dump_routes.router, dependencies=protected)
    app.include_router(uploads.router, dependencies=protected)
    return app


def _install_error_handlers(app: FastAPI, settings: Settings) -> None:
    """The two error channels, kept apart: our own errors (AgentError, a tool's failure
    mapped by agent.errors' one table) answered with their status and message; a
    request that does not validate answered 422 saying what was wrong; anything else a
    500 that names the exception class only (the log has the traceback)."""

    @app.exception_handler(AgentError)
    async def _agent_error(_: Request, exc: AgentError) -> JSONResponse:
        # RFC 6750: a 401 names the scheme it wants.
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        tool = exc.extra.get("tool")
        if isinstance(exc, Unavailable) or (isinstance(exc, Conflict) and tool is not None):
            # The core image lacks the tool: a 409 saying how to get the full image.
            full = variant.explain(
                settings.image_variant,
                detail=exc.detail,
                tool=tool if isinstance(tool, str) else None,
                by_text=isinstance(exc, Unavailable),
            )
            if full is not None:
                return JSONResponse({**exc.body(), **full}, status_code=409)
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=headers)

    @app.exception_handler(_proc.ProcError)
    async def _tool_error(_: Request, exc: _proc.ProcError) -> JSONResponse:
        # A tool that is missing, hung or failed where no module translated it: its own
        # words, with the status the one table gives it (agent.errors.TOOL_STATUS); a tool
        # the core image lacks is a 409 saying how to get the full image.
        if isinstance(exc, _proc.ToolNotFound):
            tool = os.path.basename(exc.argv[0]) if exc.argv else None
            full = variant.explain(settings.image_variant, detail=str(exc), tool=tool)
            if full is not None:
                return JSONResponse(full, status_code=409)
        error = from_tool(exc)
        return JSONResponse(error.body(), status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"detail": _validation_message(exc), "errors": jsonable_errors(exc)},
            status_code=422,
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse(
            {"detail": f"internal error ({type(exc).__name__}); see the agent's log"},
            status_code=500,
        )


def jsonable_errors(exc: RequestValidationError) -> list[dict[str, object]]:
    return [
        {"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", ""))}
        for e in exc.errors()
    ]
