"""Routes of the lttng concern: tracepoints, sessions, their actions and their traces.

Thin handlers over :class:`agent.lttng.Service` (on ``app.state.lttng``).
``GET /lttng/sessions/{id}/events`` streams babeltrace2 text or NDJSON;
``GET /lttng/sessions/{id}/trace`` is the CTF trace as a tar.gz.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from agent.deps import SettingsDep
from agent.errors import Conflict
from agent.lttng import Format, Service, SessionRequest

router = APIRouter(prefix="/lttng", tags=["lttng"])

SessionId = Annotated[
    str, Path(pattern=r"^[0-9a-f]{12}$", description="A session's id (from POST /lttng/sessions).")
]


def get_service(request: Request) -> Service:
    svc: Service = request.app.state.lttng
    return svc


ServiceDep = Annotated[Service, Depends(get_service)]

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


@router.get("/tracepoints")
async def tracepoints(svc: ServiceDep) -> dict[str, Any]:
    """Tracepoints and loggers the pod's registered apps offer, per process and domain."""
    return await svc.tracepoints()


@router.post("/sessions", status_code=201)
async def create_session(
    _: SharedLttng,
    svc: ServiceDep,
    req: SessionRequest,
    dry_run: Annotated[bool, Query(description="Show the lttng commands; run nothing.")] = False,
) -> Any:
    result = await svc.create(req, dry_run=dry_run)
    if dry_run:
        return JSONResponse(result, status_code=200)
    return JSONResponse(
        result, status_code=201, headers={"Location": f"/lttng/sessions/{result['id']}"}
    )


@router.get("/sessions")
async def list_sessions(svc: ServiceDep) -> dict[str, Any]:
    return {"sessions": [await svc.view(s, detail=False) for s in svc.list_sessions()]}


@router.get("/sessions/{session_id}")
async def get_session(svc: ServiceDep, session_id: SessionId) -> dict[str, Any]:
    return await svc.view(svc.get(session_id))


@router.delete("/sessions/{session_id}")
async def delete_session(svc: ServiceDep, session_id: SessionId) -> dict[str, Any]:
    return await svc.delete(session_id)


@router.post("/sessions/{session_id}/{action}")
async def session_action(
    svc: ServiceDep,
    session_id: SessionId,
    action: Literal["start", "stop", "rotate", "snapshot"],
) -> dict[str, Any]:
    return await svc.action(session_id, action)


@router.get("/sessions/{session_id}/trace")
async def trace(svc: ServiceDep, session_id: SessionId) -> FileResponse:
    path, filename = await svc.trace_archive(session_id)
    return FileResponse(path, media_type="application/gzip", filename=filename)


@router.get("/sessions/{session_id}/events")
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
