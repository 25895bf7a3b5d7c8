"""``/profiles``: start, watch, stop and fetch CPU profiles (thin over agent.profiling)."""

from __future__ import annotations

from os import PathLike
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Response
from fastapi.responses import FileResponse, JSONResponse

from agent import profiling
from agent.deps import SinksDep, capability
from agent.errors import ToolError
from agent.openapi import PROTECTED, TOOLS, Speedscope, content, errors
from agent.profiling import ARTIFACTS, BPFTRACE_OUT, PERF_DATA, PPROF, SPEEDSCOPE, SVG
from agent.profiling.planner import OutputFormat, Plan, ProfileDryRun, ProfileRequest
from agent.sinks import Push
from tracecar_formats.collapse import CollapseOptions

router = APIRouter(tags=["profiles"], responses=errors(*PROTECTED, 422))

JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$", description="a profile's id")]
_MEDIA: dict[str, str] = {
    SVG: "image/svg+xml",
    SPEEDSCOPE: "application/json",
    PPROF: "application/octet-stream",
    PERF_DATA: "application/octet-stream",
    BPFTRACE_OUT: "application/x-ndjson",
}


_TEXT = "text/plain; charset=utf-8"


def _artifact_route(name: str) -> dict[str, Any]:
    """The decorator arguments of an artifact's route: its media type, its errors."""
    binary = _MEDIA[name] == "application/octet-stream"
    return {
        "response_class": FileResponse,
        "responses": {
            200: content(
                f"The profile's {name}",
                _MEDIA[name],
                binary=binary,
                model=Speedscope if name == SPEEDSCOPE else None,
            ),
            **errors(404, 409),
        },
    }


class JobFailed(ToolError):
    """``wait=true`` on a profile that failed: the tool's own message, with the job's id."""


class ProfileBody(ProfileRequest, Push):
    """The body of ``POST /profiles``: what to profile and how, and ``push``."""


ServiceDep = Annotated[profiling.Service, Depends(capability("profiling", profiling.Service))]


def view(svc: profiling.Service, job: profiling.ProfileJob) -> profiling.ProfileView:
    """A profile as the API shows it: state, progress (the service's), result, links."""
    meta = job.result
    the_plan = meta.plan
    progress, elapsed = svc.progress(job)
    base = f"/profiles/{job.id}"
    links = {"self": base}
    if job.state == "succeeded":
        links |= {
            "flamegraph": f"{base}/flamegraph.svg",
            "folded": f"{base}/folded",
            "speedscope": f"{base}/speedscope.json",
            "pprof": f"{base}/profile.pb.gz",
        }
        argv = the_plan.argv if the_plan is not None else ["perf"]
        if job.params.get("type", "cpu") in ("alloc", "leak"):
            if the_plan is None or the_plan.bpftrace_argv:  # not for Python frames alone
                links["bpftrace_output"] = f"{base}/{BPFTRACE_OUT}"
            links["flamegraph_count"] = f"{base}/flamegraph.svg?weight=count"
        elif job.params.get("type", "cpu") == "off-cpu":
            # Profiles made before the DWARF recorder ran bpftrace alone, from argv.
            bpftrace_argv = the_plan.bpftrace_argv if the_plan is not None else []
            tools = {a[0] for a in (argv, bpftrace_argv) if a}
            if "bpftrace" in tools:
                links["bpftrace_output"] = f"{base}/{BPFTRACE_OUT}"
            if "perf" in tools:
                links["perf_data"] = f"{base}/{PERF_DATA}"
        elif argv:  # not when py-spy recorded every target
            links["perf_data"] = f"{base}/{PERF_DATA}"
    return profiling.ProfileView(
        id=job.id,
        state=job.state,
        phase=meta.phase,
        progress=progress,
        elapsed_s=elapsed,
        duration_s=the_plan.duration_s if the_plan is not None else 0.0,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        request=job.params,
        message=job.message,
        error=job.error,
        metadata=meta,
        links=links,
    )


def _json(v: profiling.ProfileView, status: int, **headers: str) -> JSONResponse:
    return JSONResponse(v.model_dump(mode="json"), status_code=status, headers=headers or None)


WeightQuery = Annotated[
    profiling.Weight,
    Query(description="alloc/leak: bytes (the default) or count (allocations)"),
]


def _artifact(
    svc: profiling.Service,
    job: profiling.ProfileJob,
    name: str,
    weight: profiling.Weight = "bytes",
) -> FileResponse:
    profiling.require_weight(job, weight)
    name = profiling.weighted(name, weight)
    path = svc.require_finished(job, name)
    assert path is not None
    media = _MEDIA.get(name) or _MEDIA[name.replace(profiling.COUNT_SUFFIX, "")]
    return FileResponse(path, media_type=media, filename=f"{job.id}-{name}")


@router.post(
    "/profiles",
    status_code=202,
    response_model=None,
    responses={
        200: content(
            "dry_run=true: the plan (JSON). wait=true: the finished profile in the asked "
            "format (svg, folded, speedscope JSON, pprof)",
            "application/json",
            _MEDIA[SVG],
            _TEXT,
            _MEDIA[PPROF],
            model=ProfileDryRun | Speedscope,
        ),
        202: {
            "description": "Started: the profile (poll its Location)",
            "model": profiling.ProfileView,
        },
        **errors(400, 404, 409, 429, *TOOLS),
    },
)
async def create_profile(
    svc: ServiceDep,
    sinks: SinksDep,
    body: Annotated[ProfileBody | None, Body()] = None,
    dry_run: Annotated[bool, Query(description="only show the plan")] = False,
    wait: Annotated[bool, Query(description="answer with the result when done")] = False,
    format: Annotated[OutputFormat, Query(description="with wait=true")] = "svg",
) -> Response | dict[str, Any]:
    """Start a CPU (or off-CPU) profile of a pid, pids, a container, or the whole pod.
    ``"push": true``: once done, it goes to the profile store too (``source=on-demand``)."""
    req = body or ProfileBody()
    if req.push:
        sinks.require_profile_sink()
    result = await svc.create(req, dry_run=dry_run)
    if isinstance(result, Plan):
        dry = ProfileDryRun(dry_run=True, plan=result)
        return JSONResponse(dry.model_dump(mode="json"), status_code=200)
    job = result
    if req.push:
        sinks.publish_when_done(svc, job, source="on-demand", extra={})
    location = f"/profiles/{job.id}"
    if not wait:
        return _json(view(svc, job), 202, Location=location)
    await svc.wait(job)
    if job.state != "succeeded":
        raise JobFailed(
            f"profile {job.id} {job.state}: {job.error or job.message}",
            id=job.id,
            state=job.state,
        )
    if format == "folded":
        response = _folded_file(await svc.folded(job, CollapseOptions()))
    else:
        response = _artifact(svc, job, ARTIFACTS[format])
    response.headers["Location"] = location
    return response


@router.get("/profiles")
async def list_profiles(svc: ServiceDep) -> list[profiling.ProfileView]:
    return [view(svc, j) for j in svc.profiles()]


@router.get("/profiles/{job_id}", responses=errors(404))
async def get_profile(svc: ServiceDep, job_id: JobId) -> profiling.ProfileView:
    return view(svc, svc.get(job_id))


@router.delete(
    "/profiles/{job_id}",
    response_model=None,
    status_code=202,
    responses={
        202: {
            "description": "It was running: asked to stop; what was recorded is kept",
            "model": profiling.ProfileView,
        },
        204: {"description": "Removed (it had finished, or discard=true)"},
        **errors(404),
    },
)
async def delete_profile(
    svc: ServiceDep,
    job_id: JobId,
    discard: Annotated[
        bool, Query(description="remove a running profile at once instead of stopping it")
    ] = False,
) -> Response | dict[str, Any]:
    """Running: stop early, keeping what was recorded (202). Finished (or discard): remove."""
    job = svc.get(job_id)
    if await svc.stop_or_delete(job, discard=discard):
        return Response(status_code=204)
    return _json(view(svc, job), 202)


@router.get("/profiles/{job_id}/flamegraph.svg", **_artifact_route(SVG))
async def flamegraph(svc: ServiceDep, job_id: JobId, weight: WeightQuery = "bytes") -> FileResponse:
    return _artifact(svc, svc.get(job_id), SVG, weight)


@router.get("/profiles/{job_id}/speedscope.json", **_artifact_route(SPEEDSCOPE))
async def speedscope(svc: ServiceDep, job_id: JobId, weight: WeightQuery = "bytes") -> FileResponse:
    return _artifact(svc, svc.get(job_id), SPEEDSCOPE, weight)


@router.get("/profiles/{job_id}/profile.pb.gz", **_artifact_route(PPROF))
async def pprof(svc: ServiceDep, job_id: JobId) -> FileResponse:
    return _artifact(svc, svc.get(job_id), PPROF)


@router.get("/profiles/{job_id}/perf.data", **_artifact_route(PERF_DATA))
async def perf_data(svc: ServiceDep, job_id: JobId) -> FileResponse:
    job = svc.get(job_id)
    svc.require_perf_data(job)
    return _artifact(svc, job, PERF_DATA)


@router.get("/profiles/{job_id}/bpftrace.json", **_artifact_route(BPFTRACE_OUT))
async def bpftrace_output(svc: ServiceDep, job_id: JobId) -> FileResponse:
    """An off-CPU profile's raw record: bpftrace's JSON lines (``-f json``)."""
    return _artifact(svc, svc.get(job_id), BPFTRACE_OUT)


Flag = Annotated[bool, Query()]


def _folded_file(path: PathLike[str]) -> FileResponse:
    return FileResponse(path, media_type=_TEXT)


@router.get(
    "/profiles/{job_id}/folded",
    response_class=FileResponse,
    responses={
        200: content("Collapsed stacks, one `stack count` per line", _TEXT),
        **errors(404, 409, *TOOLS),
    },
)
async def folded(
    svc: ServiceDep,
    job_id: JobId,
    pid: Flag = False,
    tid: Flag = False,
    kernel: Flag = False,
    jit: Flag = False,
    all: Flag = False,
    addrs: Flag = False,
    weight: WeightQuery = "bytes",
) -> FileResponse:
    """Collapsed stacks (stackcollapse-perf.pl format); the flags are its options."""
    options = CollapseOptions(pid=pid, tid=tid, kernel=kernel, jit=jit, all=all, addrs=addrs)
    job = svc.get(job_id)
    profiling.require_weight(job, weight)
    path = await svc.folded(job, options)
    if weight == "count":
        path = path.with_name(profiling.weighted(path.name, weight))
    return _folded_file(path)
