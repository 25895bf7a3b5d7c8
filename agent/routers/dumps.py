"""``POST /processes/{pid}/dump`` and ``/dumps/...``: core dumps as artifacts (thin
over agent.dumps)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from agent.dumps import DumpRequest, Service
from agent.jobs import DictJob
from agent.openapi import PROTECTED, TOOLS, errors

router = APIRouter(tags=["dumps"], responses=errors(*PROTECTED, 422))

Pid = Annotated[int, Path(ge=1, le=4_194_304)]
JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")]


def get_service(request: Request) -> Service:
    svc: Service = request.app.state.dumps
    return svc


ServiceDep = Annotated[Service, Depends(get_service)]


class DumpView(BaseModel):
    """One dump job."""

    id: str
    pid: int
    type: str
    writer: str = Field(description="createdump (.NET) or gdb gcore")
    state: str
    progress: float = Field(description="bytes written against the estimate")
    error: str | None
    created_at: float
    finished_at: float | None
    result: dict[str, Any] = Field(description="estimate, bytes written, the writer's output")
    links: dict[str, str]


def view(job: DictJob) -> DumpView:
    base = f"/dumps/{job.id}"
    links = {"self": base}
    if job.state == "succeeded":
        links["core"] = f"{base}/core"
    return DumpView(
        id=job.id,
        pid=int(job.params["pid"]),
        type=str(job.params["type"]),
        writer=str(job.params["writer"]),
        state=job.state,
        progress=round(job.progress, 3),
        error=job.error,
        created_at=job.created_at,
        finished_at=job.finished_at,
        result=job.result,
        links=links,
    )


@router.post(
    "/processes/{pid}/dump",
    status_code=202,
    responses={
        200: {"model": DumpView, "description": "wait=true: the dump, written (or failed)"},
        **errors(404, 409, 429, *TOOLS),
    },
)
async def create_dump(
    svc: ServiceDep,
    pid: Pid,
    response: Response,
    req: DumpRequest | None = None,
    wait: Annotated[bool, Query(description="answer when the dump is written")] = False,
) -> DumpView:
    """Write a core dump of one process (409 before writing when it would not fit)."""
    job = await svc.create(pid, req or DumpRequest())
    response.headers["location"] = f"/dumps/{job.id}"
    if wait and job.task is not None:
        await asyncio.shield(job.task)
        response.status_code = 200
    return view(job)


@router.get("/dumps")
async def list_dumps(svc: ServiceDep) -> list[DumpView]:
    return [view(j) for j in svc.list()]


@router.get("/dumps/{job_id}", responses=errors(404))
async def get_dump(svc: ServiceDep, job_id: JobId) -> DumpView:
    return view(svc.get(job_id))


@router.get(
    "/dumps/{job_id}/core",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {"schema": {"type": "string"}}}},
        **errors(404, 409),
    },
)
async def core_file(svc: ServiceDep, job_id: JobId) -> FileResponse:
    job = svc.get(job_id)
    return FileResponse(
        svc.core_file(job),
        media_type="application/octet-stream",
        filename=f"core.{job.params['pid']}",
    )


@router.delete("/dumps/{job_id}", status_code=204, responses=errors(404))
async def delete_dump(svc: ServiceDep, job_id: JobId) -> Response:
    """Stop the dump if it is being written and delete it."""
    await svc.delete(svc.get(job_id))
    return Response(status_code=204)
