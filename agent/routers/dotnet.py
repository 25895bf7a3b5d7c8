"""``/dotnet/...``: the diagnostics port of a pod's .NET process (thin over agent.dotnet):
EventPipe traces saved as .nettrace files, System.Runtime counters, ProcessInfo."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from agent.deps import capability
from agent.dotnet import (
    Counters,
    ProcessInfoAnswer,
    Service,
    TraceJob,
    TraceRequest,
    TraceResult,
    TraceSummary,
)
from agent.jobs import ended, shown
from agent.openapi import PROTECTED, JobIdPath, PidPath, errors

router = APIRouter(tags=["dotnet"], responses=errors(*PROTECTED, 422))


ServiceDep = Annotated[Service, Depends(capability("dotnet", Service))]


class TraceView(BaseModel):
    """One EventPipe trace job."""

    id: str
    pid: int
    state: str
    progress: float
    error: str | None
    created_at: float
    finished_at: float | None
    result: TraceResult = Field(description="session id, providers, bytes, events")
    links: dict[str, str]


def view(job: TraceJob) -> TraceView:
    base = f"/dotnet/traces/{job.id}"
    links = {"self": base}
    if job.state == "succeeded":
        links |= {"nettrace": f"{base}/trace.nettrace", "summary": f"{base}/summary"}
    return TraceView(**shown(job), pid=int(job.params["pid"]), result=job.result, links=links)


@router.post(
    "/dotnet/{pid}/traces",
    status_code=202,
    responses={
        200: {"model": TraceView, "description": "wait=true: the trace, ended (or failed)"},
        **errors(404, 409, 429),
    },
)
async def start_trace(
    svc: ServiceDep,
    pid: PidPath,
    req: TraceRequest,
    response: Response,
    wait: Annotated[bool, Query(description="answer when the trace has ended")] = False,
) -> TraceView:
    """An EventPipe session (what dotnet-trace collect runs) for ``duration_s``; the
    .nettrace stream is saved for PerfView, Visual Studio or dotnet-trace convert."""
    job = await svc.start_trace(pid, req)
    response.headers["location"] = f"/dotnet/traces/{job.id}"
    if wait and await ended(job):
        response.status_code = 200
    return view(job)


@router.get("/dotnet/traces")
async def list_traces(svc: ServiceDep) -> list[TraceView]:
    return [view(j) for j in svc.list()]


@router.get("/dotnet/traces/{job_id}", responses=errors(404))
async def get_trace(svc: ServiceDep, job_id: JobIdPath) -> TraceView:
    return view(svc.get(job_id))


@router.get("/dotnet/traces/{job_id}/summary", responses=errors(404, 409))
async def trace_summary(svc: ServiceDep, job_id: JobIdPath) -> TraceSummary:
    """The events of the trace, counted and named by the agent's nettrace reader."""
    return svc.summary(svc.get(job_id))


@router.get(
    "/dotnet/traces/{job_id}/trace.nettrace",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {"schema": {"type": "string"}}}},
        **errors(404, 409),
    },
)
async def trace_file(svc: ServiceDep, job_id: JobIdPath) -> FileResponse:
    job = svc.get(job_id)
    return FileResponse(
        svc.trace_file(job), media_type="application/octet-stream", filename=f"{job.id}.nettrace"
    )


@router.delete("/dotnet/traces/{job_id}", status_code=204, responses=errors(404))
async def delete_trace(svc: ServiceDep, job_id: JobIdPath) -> Response:
    """Stop the trace if it runs (its session ends) and delete it."""
    await svc.delete(svc.get(job_id))
    return Response(status_code=204)


@router.get("/dotnet/{pid}/counters", responses=errors(404, 409))
async def counters(
    svc: ServiceDep,
    pid: PidPath,
    duration_s: Annotated[float, Query(gt=0, le=300, description="how long to listen")] = 3,
    interval_s: Annotated[int, Query(ge=1, le=60, description="the counters' interval")] = 1,
) -> Counters:
    """System.Runtime's counters (CPU, GC heap, gen 0/1/2 counts, exceptions, thread
    pool...) over ``duration_s``, as dotnet-counters shows them."""
    return await svc.counters(pid, duration_s=duration_s, interval_s=interval_s)


@router.get("/dotnet/{pid}/process-info", responses=errors(404, 409))
async def process_info(svc: ServiceDep, pid: PidPath) -> ProcessInfoAnswer:
    """The runtime's own ProcessInfo (.NET 5+; older runtimes: 409 naming the minimum)."""
    return await svc.process_info(pid)
