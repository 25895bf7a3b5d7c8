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
from agent.profiling.planner import OutputFormat
from agent.routers.profiles import ServiceDep, view
from agent.sinks import Push
from tracecar_formats.collapse import format_folded
from tracecar_formats.flamegraph import render_svg
from tracecar_formats.pprof import to_pprof
from tracecar_formats.speedscope import to_speedscope

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
    """State, the retained window (Unix seconds), how far behind real time its newest
    complete second is (``lag_s``), its size, how each Python process is sampled, and
    ``push``: the continuous pushes (null when the recorder is not pushing)."""
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


def _coverage(part: profiling.Slice) -> str:
    """What the subtitle says when only part of the asked interval is retained."""
    if not part.clipped:
        return ""
    asked = f"{_hms(part.asked_start)}-{_hms(part.asked_end)}"
    return (
        f"; asked {asked} UTC, retained part only "
        f"(the ring holds {_hms(part.window_start)}-{_hms(part.window_end)})"
    )


def _hms(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t))


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f}"


def _rss_line(part: profiling.Slice) -> str:
    """The subtitle's memory: the recorded processes' RSS, first and last second."""
    if not part.rss:
        return ""
    first = sum(t.first_bytes for t in part.rss)
    last = sum(t.last_bytes for t in part.rss)
    rate = sum(t.mib_per_min for t in part.rss)
    return f"; RSS {_mib(first)} -> {_mib(last)} MiB ({rate:+.1f} MiB/min)"


def _render(part: profiling.Slice, fmt: OutputFormat, hz: int) -> bytes:
    stacks, start, end = part.stacks, part.start, part.end
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start))
    title = "Flight recorder: CPU profile"
    subtitle = (
        f"{when} UTC + {end - start:g} s at {hz} Hz, {sum(stacks.values())} samples"
        + _rss_line(part)
        + _coverage(part)
    )
    if fmt == "folded":
        return format_folded(stacks).encode()
    if fmt == "svg":
        return render_svg(stacks, title=title, subtitle=subtitle).encode()
    if fmt == "speedscope":
        doc = to_speedscope(
            stacks, name=f"{title} ({subtitle})", unit="nanoseconds", weight_per_sample=1e9 / hz
        )
        # Speedscope reads the keys it knows: the memory rides along for scripts.
        doc["tracecar"] = {"rss": [t.as_dict() for t in part.rss]}
        return json.dumps(doc).encode()
    return to_pprof(
        stacks,
        period_ns=round(1e9 / hz),
        duration_ns=round((end - start) * 1e9),
        time_ns=round(start * 1e9),
    )


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


@router.get("/recorder/memory", responses=errors(409))
async def recorder_memory(
    rec: RecorderDep,
    from_: Annotated[float, Query(alias="from", description="Unix time, seconds")],
    to: Annotated[float, Query(description="Unix time, seconds")],
) -> dict[str, Any]:
    """Each recorded process's resident memory over ``[from, to)`` (the retained part):
    first, last, min, max, growth per minute, and one point a second, biggest growth
    first. The same seconds as ``/recorder/profile``'s stacks."""
    return rec.memory(from_, to)


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
    """The profile of ``[from, to)`` (whole seconds covering it): the part of it the ring
    retains, said in the ``X-Tracecar-*`` headers (``Coverage: partial`` when some of it
    is not retained) and the SVG's subtitle. 422 only for an interval that is inverted
    or wholly outside the retained window."""
    part = rec.interval(from_, to)
    body = _render(part, format, rec.frequency_hz)
    return Response(body, media_type=_MEDIA[format], headers=coverage_headers(part))
