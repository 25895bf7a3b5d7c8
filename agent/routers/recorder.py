"""``/recorder``: the flight recorder, and flame graphs of any retained interval
(thin over agent.profiling)."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Response
from fastapi.responses import JSONResponse

from agent import profiling
from agent.deps import SettingsDep, SinksDep, capability
from agent.openapi import PROTECTED, Speedscope, content, errors
from agent.profiling.planner import OutputFormat
from agent.routers.profiles import ServiceDep, view
from agent.sinks import Push

router = APIRouter(tags=["recorder"], responses=errors(*PROTECTED, 422))

_MEDIA = {
    "svg": "image/svg+xml",
    "folded": "text/plain; charset=utf-8",
    "speedscope": "application/json",
    "pprof": "application/octet-stream",
}


RecorderDep = Annotated[
    profiling.FlightRecorder, Depends(capability("recorder", profiling.FlightRecorder))
]


class RecorderBody(profiling.RecorderRequest, Push):
    """The body of ``POST /recorder``: what to sample, the ring's bounds, and ``push``
    (continuous profiling: every TRACECAR_AGENT_CONTINUOUS_INTERVAL_S, one profile per
    process group to the profile store, ``source=continuous``)."""


@router.post(
    "/recorder",
    status_code=201,
    response_model=profiling.RecorderStatus,
    responses={201: {"description": "Recording: the status"}, **errors(400, 404, 409, 503)},
)
async def start_recorder(
    rec: RecorderDep, sinks: SinksDep, body: Annotated[RecorderBody | None, Body()] = None
) -> JSONResponse:
    """Start sampling the pod (or a pid, pids, a container) into the bounded ring;
    ``"push": true`` also sends it, interval by interval, to the profile store."""
    req = body or RecorderBody()
    if req.push:
        sinks.require("pyroscope")
    status = await rec.record(req)
    if req.push:
        sinks.start_continuous(rec)
    status.push = sinks.continuous_status()
    return JSONResponse(
        status.model_dump(mode="json"), status_code=201, headers={"Location": "/recorder"}
    )


@router.get("/recorder")
async def recorder_status(rec: RecorderDep, sinks: SinksDep) -> profiling.RecorderStatus:
    """State, the retained window (Unix seconds), how far behind real time its newest
    complete second is (``lag_s``), its size, how each Python process is sampled, and
    ``push``: the continuous pushes (null when the recorder is not pushing)."""
    status = await rec.status_with_rss()
    status.push = sinks.continuous_status()
    return status


@router.delete(
    "/recorder",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "Stopped; the ring is dropped"}},
)
async def stop_recorder(rec: RecorderDep, sinks: SinksDep) -> Response:
    await sinks.stop_continuous()  # the seconds since the last push go out first
    await rec.stop()
    return Response(status_code=204)


def coverage_headers(part: profiling.Slice) -> dict[str, str]:
    """Which part of the asked interval the answer covers (Unix seconds)."""
    return {
        "X-Tracecar-From": f"{part.start:.3f}",
        "X-Tracecar-To": f"{part.end:.3f}",
        "X-Tracecar-Requested-From": f"{part.asked_start:.3f}",
        "X-Tracecar-Requested-To": f"{part.asked_end:.3f}",
        "X-Tracecar-Window-From": f"{part.window_start:.3f}",
        "X-Tracecar-Window-To": f"{part.window_end:.3f}",
        "X-Tracecar-Coverage": "partial" if part.clipped else "whole",
        **rss_headers(part),
    }


def rss_headers(part: profiling.Slice) -> dict[str, str]:
    """The recorded processes' RSS over the same seconds (sums, bytes): the first and
    last second's, and the growth per minute (``GET /recorder/memory``: per process)."""
    if not part.rss:
        return {}
    return {
        "X-Tracecar-Rss-First": str(sum(t.first_bytes for t in part.rss)),
        "X-Tracecar-Rss-Last": str(sum(t.last_bytes for t in part.rss)),
        "X-Tracecar-Rss-Max": str(max(t.max_bytes for t in part.rss)),
        "X-Tracecar-Rss-Growth-Mib-Per-Min": f"{sum(t.mib_per_min for t in part.rss):.3f}",
    }


@router.post(
    "/recorder/profiles",
    status_code=201,
    response_model=None,
    responses={
        201: {"description": "The interval, kept as a profile", "model": profiling.ProfileView},
        **errors(409),
    },
)
async def save_recorder_interval(
    rec: RecorderDep,
    svc: ServiceDep,
    from_: Annotated[float, Query(alias="from", description="Unix time, seconds")],
    to: Annotated[float, Query(description="Unix time, seconds")],
) -> JSONResponse:
    """Keep ``[from, to)`` as a profile: its outputs at ``/profiles/{id}/...``, and an id
    ``GET /profiles/diff`` compares with a capture or another interval."""
    job = await rec.save_interval(svc, from_, to)
    return JSONResponse(
        view(svc, job).model_dump(mode="json"),
        status_code=201,
        headers={"Location": f"/profiles/{job.id}"},
    )


@router.get("/recorder/memory", responses=errors(409))
async def recorder_memory(
    rec: RecorderDep,
    from_: Annotated[float, Query(alias="from", description="Unix time, seconds")],
    to: Annotated[float, Query(description="Unix time, seconds")],
) -> profiling.RecorderMemory:
    """Each recorded process's resident memory over ``[from, to)`` (the retained part):
    first, last, min, max, growth per minute, and one point a second, biggest growth
    first. The same seconds as ``/recorder/profile``'s stacks."""
    return await rec.memory(from_, to)


@router.get(
    "/recorder/profile",
    response_class=Response,
    responses={
        200: content(
            "The interval's profile in the asked format", *_MEDIA.values(), model=Speedscope
        ),
        **errors(409),
    },
)
async def recorder_profile(
    rec: RecorderDep,
    settings: SettingsDep,
    from_: Annotated[float, Query(alias="from", description="Unix time, seconds")],
    to: Annotated[float, Query(description="Unix time, seconds")],
    format: Annotated[OutputFormat, Query()] = "svg",
) -> Response:
    """The profile of ``[from, to)`` (whole seconds covering it): the part of it the ring
    retains, said in the ``X-Tracecar-*`` headers (``Coverage: partial`` when some of it
    is not retained) and the SVG's subtitle. 422 only for an interval that is inverted
    or wholly outside the retained window."""
    # Both heavy steps in worker threads: merging up to a day of one-second buckets, and
    # rendering it (the loop keeps timing perf, feeding probe streams, answering /healthz).
    part = await rec.merged(from_, to)
    info = profiling.interval_info(
        part, frequency_hz=rec.frequency_hz, where=settings.pod_name or "this pod"
    )
    body = await profiling.render_in_thread(part.stacks, format, info, pids=part.pids)
    if format == "speedscope" and part.rss:
        body = await asyncio.to_thread(_with_rss, body, part)
    return Response(body, media_type=_MEDIA[format], headers=coverage_headers(part))


def _with_rss(body: bytes, part: profiling.Slice) -> bytes:
    """Speedscope reads the keys it knows: the memory rides along for scripts."""
    doc = json.loads(body)
    doc["tracecar"] = {"rss": [profiling.RssTrendView.of(t).model_dump() for t in part.rss]}
    return json.dumps(doc).encode()
