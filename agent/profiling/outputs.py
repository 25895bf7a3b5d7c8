"""A profile's outputs: what each kind of profile says about itself, rendered off the loop.

Every output of the agent's profiles goes through :func:`tracecar_formats.render.render`
with a :class:`~tracecar_formats.render.RenderInfo` made here: a recorded CPU or
off-CPU profile (:func:`profile_info`), an interval of the flight recorder
(:func:`interval_info`). Rendering is CPU-bound (the SVG of a day of the flight
recorder takes seconds), so the agent calls it only through :func:`render_in_thread`
or from code already in a worker thread (:func:`write_outputs`): the event loop that
times perf, feeds the probes' streams and answers ``/healthz`` never waits for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from agent.jobs import Job, write_atomic
from agent.profiling._artifacts import ARTIFACTS
from agent.profiling._flight_ring import Slice
from agent.symbolize.sources import go_sources
from tracecar_formats.render import (
    CPU_SAMPLE_TYPES,
    OFF_CPU_SAMPLE_TYPES,
    Format,
    RenderInfo,
    render,
)

ProfileType = Literal["cpu", "off-cpu"]


def units(kind: str) -> str:
    """What a profile's folded counts count."""
    return "microseconds off CPU" if kind == "off-cpu" else "samples"


def profile_info(
    *,
    kind: str,
    target: str,
    where: str,
    started_at: float,
    duration_s: float,
    frequency_hz: int,
    call_graph: str,
    stacks: Mapping[str, int],
) -> RenderInfo:
    """A recorded profile (or a kept interval of the flight recorder)."""
    total = sum(stacks.values())
    if kind == "off-cpu":
        return RenderInfo(
            what="Off-CPU profile",
            of=target,
            where=where,
            started_at=started_at,
            duration_s=duration_s,
            details=f"widths: time off CPU (sleeping, blocked on locks or I/O, waiting for a "
            f"CPU), {total / 1e6:.3f} s in all",
            count_name=units(kind),
            period_ns=1000,  # a count is a microsecond
            sample_types=OFF_CPU_SAMPLE_TYPES,
        )
    return RenderInfo(
        what="CPU profile",
        of=target,
        where=where,
        started_at=started_at,
        duration_s=duration_s,
        details=f"{frequency_hz} Hz, {call_graph} call graphs, {total} samples",
        count_name=units(kind),
        period_ns=round(1e9 / frequency_hz),
        sample_types=CPU_SAMPLE_TYPES,
    )


def _hms(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t))


def interval_info(part: Slice, *, frequency_hz: int, where: str) -> RenderInfo:
    """An interval of the flight recorder, saying which part of the asked one it covers."""
    coverage = ""
    if part.clipped:
        coverage = (
            f"; asked {_hms(part.asked_start)}-{_hms(part.asked_end)} UTC, retained part "
            f"only (the ring holds {_hms(part.window_start)}-{_hms(part.window_end)})"
        )
    return RenderInfo(
        what="CPU profile",
        of=f"the flight recorder, {_hms(part.start)}-{_hms(part.end)} UTC",
        where=where,
        started_at=part.start,
        duration_s=part.end - part.start,
        details=f"{frequency_hz} Hz, {sum(part.stacks.values())} samples{coverage}",
        period_ns=round(1e9 / frequency_hz),
    )


async def render_in_thread(
    stacks: Mapping[str, int],
    fmt: Format,
    info: RenderInfo,
    *,
    pids: Iterable[int] = (),
) -> bytes:
    """:func:`~tracecar_formats.render.render` in a worker thread; pprof gets the Go
    functions' file and line from the pclntabs of ``pids`` (read in that thread too)."""

    def work() -> bytes:
        sources = _sources(pids, stacks) if fmt == "pprof" else None
        return render(stacks, fmt, info, sources=sources)

    return await asyncio.to_thread(work)


def _sources(pids: Iterable[int], stacks: Mapping[str, int]) -> dict[str, tuple[str, int]]:
    return go_sources(list(pids), {f for k in stacks for f in k.split(";")})


def write_outputs(
    job: Job[Any], stacks: Mapping[str, int], info: RenderInfo, *, pids: Iterable[int] = ()
) -> None:
    """Every rendered output of a profile into its directory (atomic writes); the folded
    file is the caller's (it is written first, whatever the rendering does). Blocking:
    call it in a worker thread."""
    sources = _sources(pids, stacks)  # Go's file:line, while the targets still run
    for fmt, name in ARTIFACTS.items():
        if fmt != "folded":
            write_atomic(job.artifact(name), render(stacks, fmt, info, sources=sources))
