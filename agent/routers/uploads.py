"""Uploads of artifacts to the object store (thin over agent.sinks): a profile's
perf.data and an LTTng session's CTF trace, answered with the object's key."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from agent import profiling
from agent.deps import SinksDep
from agent.openapi import PROTECTED, errors
from agent.routers.lttng import ServiceDep as LttngDep
from agent.routers.lttng import SessionId
from agent.routers.profiles import JobId, ServiceDep
from agent.sinks import Upload

router = APIRouter(tags=["sinks"], responses=errors(*PROTECTED, 422))

Presign = Annotated[
    bool, Query(description="also answer a presigned GET URL of the object (valid for an hour)")
]


_ANSWERS = {
    200: {"description": "Stored in the object store, or spooled for it (see state)"},
    **errors(404, 409),
}


@router.post("/profiles/{job_id}/perf.data/upload", responses=_ANSWERS)
async def upload_perf_data(
    svc: ServiceDep, sinks: SinksDep, job_id: JobId, presign: Presign = False
) -> Upload:
    """Send a finished profile's perf.data to the object store (409 when none is set)."""
    sinks.require("s3")
    job = svc.jobs.get(profiling.KIND, job_id)
    svc.require_perf_data(job)
    path = svc.require_finished(job, profiling.PERF_DATA)
    assert path is not None
    return await sinks.upload(
        path,
        parts=("profiles", job.id, profiling.PERF_DATA),
        content_type="application/octet-stream",
        presign=presign,
    )


@router.post("/lttng/sessions/{session_id}/trace/upload", responses=_ANSWERS)
async def upload_trace(
    svc: LttngDep, sinks: SinksDep, session_id: SessionId, presign: Presign = False
) -> Upload:
    """Send a session's CTF trace (tar.gz) to the object store (409 when none is set)."""
    sinks.require("s3")
    path, filename = await svc.trace_archive(session_id)
    return await sinks.upload(
        path,
        parts=("lttng", session_id, filename),
        content_type="application/gzip",
        presign=presign,
    )
