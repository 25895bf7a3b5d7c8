"""Routes of the probes concern: symbols of a process, and uprobes or USDT probes attached to it.

Thin handlers over :class:`agent.probes.Service` (on ``app.state.probes``).
``GET /probes/{id}/events`` answers NDJSON, or Server-Sent Events when the
client's ``Accept`` asks for ``text/event-stream`` (``curl -N`` shows them live).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query
from fastapi.responses import JSONResponse, StreamingResponse

from agent.deps import capability
from agent.openapi import PROTECTED, TOOLS, content, errors
from agent.probes import (
    STREAM_MAX_BYTES,
    ProbeDryRun,
    ProbeList,
    ProbeRequest,
    ProbeView,
    Service,
    SymbolList,
)

router = APIRouter(tags=["probes"], responses=errors(*PROTECTED, 422))

ProbeId = Annotated[str, Path(pattern=r"^[0-9a-f]{8}$", description="A probe's id.")]


ServiceDep = Annotated[Service, Depends(capability("probes", Service))]


@router.get("/processes/{pid}/symbols", responses=errors(404))
async def symbols(
    svc: ServiceDep,
    pid: Annotated[int, Path(ge=1, le=1 << 22)],
    match: Annotated[str | None, Query(max_length=256, description="A regular expression.")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 2000,
) -> SymbolList:
    """Functions (and USDT probes) of the process's executable and loaded libraries."""
    return await svc.symbols(pid, match=match, limit=limit)


@router.post(
    "/probes",
    status_code=201,
    response_model=ProbeView,
    responses={
        200: {"model": ProbeDryRun, "description": "dry_run=true: the plan (nothing attached)"},
        201: {"description": "Attached: the probe (its Location follows it)"},
        **errors(400, 403, 404, 409, 429, *TOOLS),
    },
)
async def create_probe(
    svc: ServiceDep,
    req: ProbeRequest,
    dry_run: Annotated[bool, Query(description="Show the plan; attach nothing.")] = False,
) -> JSONResponse:
    """Attach a uprobe (`function`), a USDT probe (`usdt`) or a Python function (`python_function`).

    409: the target cannot have this probe (a Python built without USDT probes, a
    process that is not Python); 503: no backend, or bpftrace needed and unusable.
    """
    result = await svc.create(req, dry_run=dry_run)
    # The fields the service set: a plain uprobe's target names no USDT fields.
    body = result.model_dump(mode="json", exclude_unset=True)
    if isinstance(result, ProbeDryRun):
        return JSONResponse(body, status_code=200)
    return JSONResponse(body, status_code=201, headers={"Location": f"/probes/{result.id}"})


@router.get("/probes")
async def list_probes(svc: ServiceDep) -> ProbeList:
    return ProbeList(probes=svc.list_probes())


@router.get("/probes/{probe_id}", responses=errors(404))
async def get_probe(svc: ServiceDep, probe_id: ProbeId) -> ProbeView:
    return svc.get(probe_id).view()


@router.get(
    "/probes/{probe_id}/events",
    response_class=StreamingResponse,
    responses={
        200: content(
            "The events until the probe ends: NDJSON, or Server-Sent Events when Accept "
            "asks for text/event-stream",
            "application/x-ndjson",
            "text/event-stream",
        ),
        **errors(404),
    },
)
async def probe_events(
    svc: ServiceDep,
    probe_id: ProbeId,
    accept: Annotated[str, Header()] = "application/x-ndjson",
    max_bytes: Annotated[int, Query(ge=1024, le=STREAM_MAX_BYTES)] = STREAM_MAX_BYTES,
) -> StreamingResponse:
    sse = "text/event-stream" in accept
    body = svc.stream(probe_id, sse=sse, max_bytes=max_bytes)
    media = "text/event-stream" if sse else "application/x-ndjson"
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body, media_type=media, headers=headers)


@router.delete("/probes/{probe_id}", responses=errors(404))
async def delete_probe(svc: ServiceDep, probe_id: ProbeId) -> ProbeView:
    return await svc.delete(probe_id)
