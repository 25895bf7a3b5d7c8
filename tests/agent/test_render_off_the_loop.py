"""Nothing heavy on the event loop: while the largest flight-recorder profile is merged
and rendered, the agent's loop keeps answering ``/healthz``.

The ring holds a full day (86,400 one-second buckets, the largest ``retain_s``) of
20,000 distinct stacks; ``GET /recorder/profile?format=svg`` merges and renders all of
it, which takes about a second here. The app runs in this test's own event loop
(httpx's ASGI transport), the same loop that serves ``/healthz`` and ticks a
stall counter.

What proves the work is off the loop is where it runs, not how long anything took:
the merge and the render are wrapped (our own seams) to record the thread they run
in, and neither may be the loop's. ``/healthz`` must be answered again and again while
the request runs, and the loop's longest stall must be shorter than the merge and the
render themselves (on the loop, it would be at least the longer of the two).

Why not "``/healthz`` within 100 ms", as the issue first put it: on a machine whose two
cores other builds keep busy, any process may wait 100 ms for a core, and a garbage
collection of the day's buckets (in whichever thread allocates) stops every thread; a
bare threshold fails for reasons that are not where the render runs (the team's rule:
tests do not depend on timing). A ratio of the render's own time failed that way too,
once, under load. The absolute figures (here: stalls of a few ms, ``/healthz`` in
1-10 ms, the render about 1 s) are in the assertion messages.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.app import create_app
from agent.profiling import FlightRecorder, RecorderRequest, _flight_recorder, outputs
from agent.profiling._flight_recorder import _Run
from agent.profiling._flight_ring import Bucket, Ring
from agent.settings import Settings

DAY = 86_400
START = 1_796_500_000
TICK_S = 0.005


def _full_day() -> _Run:
    req = RecorderRequest(retain_s=DAY, max_bytes=256 << 20)
    ring = Ring(retain_s=DAY, max_bytes=256 << 20, frequency_hz=req.frequency_hz)
    pool = [f"app;main;mod{i % 60};part{i % 900};leaf{i}" for i in range(20_000)]
    for s in range(DAY):
        stacks = {7: {pool[(s * 7 + j * 4_001) % len(pool)]: 3 + j for j in range(5)}}
        ring.buckets.append(Bucket(start=START + s, stacks=stacks, size=400))
    ring.complete_until = START + DAY
    run = _Run(request=req, ring=ring)
    run.state = "recording"
    return run


async def _scenario(tmp_path: Path) -> tuple[float, float, list[float], bytes, int]:
    app = create_app(Settings(data_dir=tmp_path, auth="none"))
    rec: FlightRecorder = app.state.recorder
    rec._run = _full_day()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
        assert (await client.get("/healthz")).status_code == 200  # warm the routes up
        done = asyncio.Event()
        longest_stall = 0.0
        health: list[float] = []

        async def ticker() -> None:
            nonlocal longest_stall
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(TICK_S)
                now = time.perf_counter()
                longest_stall = max(longest_stall, now - last - TICK_S)
                last = now

        async def healthz() -> None:
            while not done.is_set():
                t0 = time.perf_counter()
                r = await client.get("/healthz")
                assert r.status_code == 200
                if not done.is_set():
                    health.append(time.perf_counter() - t0)
                await asyncio.sleep(TICK_S)

        tasks = [asyncio.create_task(ticker()), asyncio.create_task(healthz())]
        t0 = time.perf_counter()
        r = await client.get(
            "/recorder/profile", params={"from": START, "to": START + DAY, "format": "svg"}
        )
        took = time.perf_counter() - t0
        done.set()
        await asyncio.gather(*tasks)
    assert r.status_code == 200, r.text
    return took, longest_stall, health, r.content, threading.get_ident()


class _Spy:
    """Where and how long a wrapped function ran (the thread's ident, the seconds)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.threads: list[int] = []
        self.seconds = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.threads.append(threading.get_ident())
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


def test_healthz_answers_while_the_largest_recorder_profile_renders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    merge, render = _Spy(_flight_recorder.merge), _Spy(outputs.render)
    monkeypatch.setattr(_flight_recorder, "merge", merge)
    monkeypatch.setattr(outputs, "render", render)
    # A full garbage collection stops every thread of the process, wherever the render
    # runs, for as long as it takes to walk every object: in the unit stage's process,
    # after a thousand tests, that walk took 200 ms. What the request does is the
    # question, so what existed before it is moved out of the collector's sight.
    gc.collect()
    gc.freeze()
    try:
        took, stall, health, svg, loop_thread = asyncio.run(_scenario(tmp_path))
    finally:
        gc.unfreeze()
    figures = (
        f"request {took * 1000:.0f} ms (merge {merge.seconds * 1000:.0f} ms, render "
        f"{render.seconds * 1000:.0f} ms); longest loop stall {stall * 1000:.1f} ms; "
        f"/healthz answered {len(health)} times, slowest {max(health, default=0) * 1000:.1f} ms"
    )
    assert svg.startswith(b"<?xml") and b"CPU profile of the flight recorder" in svg, figures
    assert merge.threads and render.threads, "the request did not merge and render"
    assert loop_thread not in merge.threads + render.threads, "merged or rendered on the loop"
    assert len(health) >= 3, figures
    assert stall < max(merge.seconds, render.seconds), figures
