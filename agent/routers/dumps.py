"""``POST /processes/{pid}/dump`` (and its name for heap dumps, ``/heapdump``) and
``/dumps/...``: core dumps and Java heap dumps as artifacts (thin over agent.dumps)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, get_args

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from agent.deps import capability
from agent.dumps import (
    FILES,
    DumpFormat,
    DumpJob,
    DumpRequest,
    DumpResult,
    Service,
    format_of,
    link,
)
from agent.jobs import ended, shown
from agent.openapi import PROTECTED, TOOLS, JobIdPath, PidPath, errors

router = APIRouter(tags=["dumps"], responses=errors(*PROTECTED, 422))


ServiceDep = Annotated[Service, Depends(capability("dumps", Service))]


class DumpView(BaseModel):
    """One dump job."""

    id: str
    pid: int
    type: str
    writer: str = Field(description="createdump (.NET), jattach dumpheap (Java) or gdb gcore")
    format: str = Field(description="core (a core dump) or hprof (a Java heap dump)")
    state: str
    progress: float = Field(description="bytes written against the estimate")
    error: str | None
    created_at: float
    finished_at: float | None
    result: DumpResult = Field(description="estimate, bytes written, the writer's output")
    links: dict[str, str]


def view(job: DumpJob) -> DumpView:
    links = {"self": f"/dumps/{job.id}"}
    fmt = format_of(job)
    if job.state == "succeeded":
        links[fmt] = link(job, fmt)
    return DumpView(
        **shown(job),
        pid=int(job.params["pid"]),
        type=str(job.params["type"]),
        writer=str(job.params["writer"]),
        format=fmt,
        result=job.result,
        links=links,
    )


_DUMP_RESPONSES = {
    200: {"model": DumpView, "description": "wait=true: the dump, written (or failed)"},
    **errors(400, 404, 409, 429, *TOOLS),
}


@router.post(
    "/processes/{pid}/dump",
    status_code=202,
    responses=_DUMP_RESPONSES,
)
async def create_dump(
    svc: ServiceDep,
    pid: PidPath,
    response: Response,
    req: DumpRequest | None = None,
    wait: Annotated[bool, Query(description="answer when the dump is written")] = False,
) -> DumpView:
    """Write a dump of one process: .NET createdump, a JVM's .hprof heap dump (type
    heap, the default for Java) or gcore (409 before writing when it would not fit)."""
    job = await svc.create(pid, req or DumpRequest())
    response.headers["location"] = f"/dumps/{job.id}"
    if wait and await ended(job):
        response.status_code = 200
    return view(job)


# The same endpoint by the name a heap dump goes by (one handler, one job, one model).
router.post(
    "/processes/{pid}/heapdump",
    status_code=202,
    responses=_DUMP_RESPONSES,
    name="create_heapdump",
    description="The same endpoint as ``/processes/{pid}/dump`` (one job, one artifact "
    "model),\nby the name a heap dump goes by: a JVM's .hprof (``jattach dumpheap``), "
    ".NET's\ncreatedump with its GC heap, gcore for the rest; 409 before writing when "
    "it\nwould not fit.",
)(create_dump)


@router.get("/dumps")
async def list_dumps(svc: ServiceDep) -> list[DumpView]:
    return [view(j) for j in svc.list()]


@router.get("/dumps/{job_id}", responses=errors(404))
async def get_dump(svc: ServiceDep, job_id: JobIdPath) -> DumpView:
    return view(svc.get(job_id))


# One download route per format, the same handler (a path each, as the view's links name).
_DOWNLOADS: dict[DumpFormat, tuple[str, str, str]] = {
    # format: (operation name, file name in the answer, description)
    "core": ("core_file", "core.{pid}", "A core dump: gdb, lldb or dotnet-dump analyze open it."),
    "hprof": ("hprof_file", "heap.{pid}.hprof", "A Java heap dump: Eclipse MAT, VisualVM, "
              "IntelliJ open it."),
}  # fmt: skip


def _download(fmt: DumpFormat) -> Callable[[Service, str], Awaitable[FileResponse]]:
    filename = _DOWNLOADS[fmt][1]

    async def download(svc: ServiceDep, job_id: JobIdPath) -> FileResponse:
        job = svc.get(job_id)
        return FileResponse(
            svc.dump_file(job, fmt=fmt),
            media_type="application/octet-stream",
            filename=filename.format(pid=job.params["pid"]),
        )

    return download


for _fmt in get_args(DumpFormat):
    _name, _file, _about = _DOWNLOADS[_fmt]
    router.get(
        f"/dumps/{{job_id}}/{FILES[_fmt]}",
        name=_name,
        description=_about,
        response_class=FileResponse,
        responses={
            200: {"content": {"application/octet-stream": {"schema": {"type": "string"}}}},
            **errors(404, 409),
        },
    )(_download(_fmt))


@router.delete("/dumps/{job_id}", status_code=204, responses=errors(404))
async def delete_dump(svc: ServiceDep, job_id: JobIdPath) -> Response:
    """Stop the dump if it is being written and delete it."""
    await svc.delete(svc.get(job_id))
    return Response(status_code=204)
