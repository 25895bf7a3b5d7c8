"""``/recorder``: the flight recorder, and flame graphs of any retained interval
(thin over agent.profiling)."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from agent import profiling
from agent.deps import SinksDep
from agent.openapi import PROTECTED, content, errors
from agent.profiling.collapse import format_folded
from agent.profiling.flamegraph import render_svg
from agent.profiling.planner import OutputFormat
from agent.profiling.pprof import to_pprof
from agent.profiling.speedscope import to_speedscope
from agent.routers.profiles import ServiceDep, view
from agent.sinks import Push

router = APIRouter(tags=["recorder"], responses=errors(*PROTECTED, 422))

_MEDIA = {
    "svg": "image/svg+xml",
    "folded": "text/plain; charset=utf-8",
    "speedscope": "application/json",
    "pprof": "application/octet-stream",
}


def get_recorder(request: Request) -> profiling.FlightRecorder:
    rec: profiling.FlightRecorder = request.app.state.recorder
    return rec


RecorderDep = Annotated[profiling.FlightRecorder, Depends(get_recorder)]


class RecorderBody(profiling.RecorderRequest, Push):
    """The body of ``POST /recorder``: what to sample, the ring's bounds, and ``push``
    (continuous profiling: every TRACECAR_AGENT_CONTINUOUS_INTERVAL_S, one profile per
    process group to the profile store, ``source=continuous``)."""


@router.post(
    "/recorder",
    status_code=201,
    response_model=None,
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
    status = await rec.start(req)
    if req.push:
        sinks.start_continuous(rec)
    status["push"] = sinks.continuous_status()
    return JSONResponse(status, status_code=201, headers={"Location": "/recorder"})


@router.get("/recorder")
async def recorder_status(rec: RecorderDep, sinks: SinksDep) -> dict[str, Any]:
    """State, the retained window (Unix seconds), its size and both bounds; ``push``: the
    continuous pushes (null when the recorder is not pushing)."""
    return {**rec.status(), "push": sinks.continuous_status()}


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


def _render(stacks: dict[str, int], fmt: OutputFormat, start: float, end: float, hz: int) -> bytes:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start))
    title = "Flight recorder: CPU profile"
    subtitle = f"{when} UTC + {end - start:g} s at {hz} Hz, {sum(stacks.values())} samples"
    if fmt == "folded":
        return format_folded(stacks).encode()
    if fmt == "svg":
        return render_svg(stacks, title=title, subtitle=subtitle).encode()
    if fmt == "speedscope":
        doc = to_speedscope(
            stacks, name=f"{title} ({subtitle})", unit="nanoseconds", weight_per_sample=1e9 / hz
        )
        return json.dumps(doc).encode()
    return to_pprof(
        stacks,
        period_ns=round(1e9 / hz),
        duration_ns=round((end - start) * 1e9),
        time_ns=round(start * 1e9),
    )


@router.post(
    "/recorder/profiles",
    status_code=201,
    response_model=None,
    responses={201: {"description": "The interval, kept as a profile"}, **errors(409)},
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
    return JSONResponse(view(job), status_code=201, headers={"Location": f"/profiles/{job.id}"})


@router.get(
    "/recorder/profile",
    response_class=Response,
    responses={
        200: content("The interval's profile in the asked format", *_MEDIA.values()),
        **errors(409),
    },
)
async def recorder_profile(
    rec: RecorderDep,
    from_: Annotated[float, Query(alias="from", description="Unix time, seconds")],
    to: Annotated[float, Query(description="Unix time, seconds")],
    format: Annotated[OutputFormat, Query()] = "svg",
) -> Response:
    """The profile of ``[from, to)`` (whole seconds covering it) from the retained window."""
    stacks, start, end = rec.interval(from_, to)
    body = _render(stacks, format, start, end, rec.frequency_hz)
    headers = {"X-Tracecar-From": f"{start:.3f}", "X-Tracecar-To": f"{end:.3f}"}
    return Response(body, media_type=_MEDIA[format], headers=headers)
