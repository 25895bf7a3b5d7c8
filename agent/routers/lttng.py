"""Routes of the lttng concern: tracepoints, sessions, their actions and their traces.

Thin handlers over :class:`agent.lttng.Service` (on ``app.state.lttng``).
``GET /lttng/sessions/{id}/events`` streams babeltrace2 text or NDJSON;
``GET /lttng/sessions/{id}/trace`` is the CTF trace as a tar.gz.
"""

from __future__ import annotations

from typing import Annotated, NoReturn

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent.deps import SettingsDep, capability
from agent.errors import Conflict, Invalid
from agent.lttng import (
    Action,
    Deleted,
    Format,
    Service,
    SessionList,
    SessionPlan,
    SessionRequest,
    SessionView,
    Tracepoints,
)
from agent.openapi import PROTECTED, TOOLS, content, errors

router = APIRouter(prefix="/lttng", tags=["lttng"], responses=errors(*PROTECTED, 422))

SessionId = Annotated[
    str, Path(pattern=r"^[0-9a-f]{12}$", description="A session's id (from POST /lttng/sessions).")
]


ServiceDep = Annotated[Service, Depends(capability("lttng", Service))]

ATTACHED_LTTNG = (
    "LTTng needs the pod's shared /var/run/lttng, where the apps' LTTng-UST finds the "
    "agent's session daemon; an attached agent (ephemeral container) cannot add that "
    "volume to a running pod. Label the pod template profiling=enabled so the webhook "
    "injects the agent with it (the pods restart once)"
)


def require_shared_lttng(settings: SettingsDep) -> None:
    if settings.mode == "attached":
        raise Conflict(ATTACHED_LTTNG)


SharedLttng = Annotated[None, Depends(require_shared_lttng)]


@router.get("/tracepoints", responses=errors(*TOOLS))
async def tracepoints(svc: ServiceDep) -> Tracepoints:
    """Tracepoints and loggers the pod's registered apps offer, per process and domain."""
    return await svc.tracepoints()


@router.post(
    "/sessions",
    status_code=201,
    response_model=SessionView,
    responses={
        200: {
            "model": SessionPlan,
            "description": "dry_run=true: the lttng commands (nothing run)",
        },
        201: {"description": "Created: the session (its Location follows it)"},
        **errors(400, 404, 409, 429, *TOOLS),
    },
)
async def create_session(
    _: SharedLttng,
    svc: ServiceDep,
    req: SessionRequest,
    dry_run: Annotated[bool, Query(description="Show the lttng commands; run nothing.")] = False,
) -> JSONResponse:
    result = await svc.create(req, dry_run=dry_run)
    if isinstance(result, SessionPlan):
        return JSONResponse(result.model_dump(mode="json"), status_code=200)
    return JSONResponse(
        result.model_dump(mode="json"),
        status_code=201,
        headers={"Location": f"/lttng/sessions/{result.id}"},
    )


@router.get("/sessions")
async def list_sessions(svc: ServiceDep) -> SessionList:
    return SessionList(sessions=[await svc.view(s, detail=False) for s in svc.list_sessions()])


@router.get("/sessions/{session_id}", responses=errors(404, *TOOLS))
async def get_session(svc: ServiceDep, session_id: SessionId) -> SessionView:
    return await svc.view(svc.get(session_id))


@router.delete("/sessions/{session_id}", responses=errors(404))
async def delete_session(svc: ServiceDep, session_id: SessionId) -> Deleted:
    return await svc.delete(session_id)


# One route per action (not ``{action}``), so the document names each and a GET of
# .../start is a 405 naming POST, as it says.
_ACTION = errors(404, 409, *TOOLS)


def _action_route(action: Action, summary: str) -> None:
    async def act(svc: ServiceDep, session_id: SessionId) -> SessionView:
        return await svc.action(session_id, action)

    router.add_api_route(
        f"/sessions/{{session_id}}/{action}",
        act,
        methods=["POST"],
        name=f"{action}_session",
        summary=summary,
        responses=_ACTION,
    )


_action_route("start", "Start (or restart) recording")
_action_route("stop", "Stop recording; the trace becomes readable")
_action_route("rotate", "Close the current trace chunk (normal mode) to read it while recording")
_action_route("snapshot", "Write the ring buffers' contents as a snapshot (snapshot mode)")


@router.post("/sessions/{session_id}/{action}", include_in_schema=False, response_model=None)
async def unknown_action(session_id: str, action: str) -> NoReturn:
    """Any other POST: .../trace and .../events are GET only (405); the rest is no action."""
    if action in ("trace", "events"):
        raise StarletteHTTPException(405)  # agent.openapi's handler names the methods
    raise Invalid(
        f"action: {action!r} is not an action on LTTng sessions (allowed: start, stop, "
        "rotate, snapshot)",
        field="action",
    )


@router.get(
    "/sessions/{session_id}/trace",
    response_class=FileResponse,
    responses={
        200: content("The CTF trace as a tar.gz", "application/gzip", binary=True),
        **errors(404, 409),
    },
)
async def trace(svc: ServiceDep, session_id: SessionId) -> FileResponse:
    path, filename = await svc.trace_archive(session_id)
    return FileResponse(path, media_type="application/gzip", filename=filename)


@router.get(
    "/sessions/{session_id}/events",
    response_class=StreamingResponse,
    responses={
        200: content(
            "The events: babeltrace2's text (format=text) or NDJSON (format=json)",
            "text/plain; charset=utf-8",
            "application/x-ndjson",
        ),
        **errors(404, 409, *TOOLS),
    },
)
async def events(
    svc: ServiceDep,
    session_id: SessionId,
    format: Annotated[Format, Query(description="text: babeltrace2's; json: NDJSON")] = "text",
    offset: Annotated[int, Query(ge=0, le=1 << 40, description="Events to skip.")] = 0,
    limit: Annotated[int | None, Query(ge=1, le=1 << 40, description="Events at most.")] = None,
    begin_ns: Annotated[
        int | None, Query(ge=0, description="From this time (ns since epoch).")
    ] = None,
    end_ns: Annotated[
        int | None, Query(ge=0, description="Up to this time (ns since epoch).")
    ] = None,
) -> StreamingResponse:
    body = svc.events(
        session_id, fmt=format, offset=offset, limit=limit, begin_ns=begin_ns, end_ns=end_ns
    )
    media = "application/x-ndjson" if format == "json" else "text/plain; charset=utf-8"
    return StreamingResponse(body, media_type=media)
