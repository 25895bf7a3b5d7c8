"""Nothing heavy on the event loop: while the largest flight-recorder profile is merged
and rendered, the agent's loop keeps answering ``/healthz``.

The ring holds a full day (86,400 one-second buckets, the largest ``retain_s``) of
20,000 distinct stacks; ``GET /recorder/profile?format=svg`` merges and renders all of
it, which takes about a second here. The app runs in this test's own event loop
(httpx's ASGI transport), the same loop that serves ``/healthz`` and ticks a
stall counter.

Why relative, not "``/healthz`` within 100 ms": on a machine whose two cores other
builds keep busy, any process may wait 100 ms for a core, and a bare threshold fails
for reasons that are not ours (the team's rule: tests do not depend on timing). What
tells a render on the loop from one in a worker thread is the shape of the stalls:
on the loop, the longest stall is the whole merge and render (the request's own
duration, minus the HTTP overhead); off the loop, it is a scheduling hiccup, a small
part of it. So the test asserts that the longest stall and the slowest ``/healthz``
stay under 60% of the render's own duration, and that ``/healthz`` was answered again
and again while it ran. Not a third, as first written: with both cores busy, the render
thread held the GIL through single long C calls (sorting, joining) for 150-290 ms of a
350-900 ms render; a render on the loop stalls it for all of it. The absolute
figures (here: stalls of a few ms, ``/healthz`` in 1-10 ms, the render about 1 s)
are in the assertion messages.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from agent.app import create_app
from agent.profiling import FlightRecorder, RecorderRequest
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


async def _scenario(tmp_path: Path) -> tuple[float, float, list[float], bytes]:
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
    return took, longest_stall, health, r.content


def test_healthz_answers_while_the_largest_recorder_profile_renders(tmp_path: Path) -> None:
    took, stall, health, svg = asyncio.run(_scenario(tmp_path))
    figures = (
        f"render {took * 1000:.0f} ms; longest loop stall {stall * 1000:.1f} ms; "
        f"/healthz answered {len(health)} times, slowest {max(health, default=0) * 1000:.1f} ms"
    )
    assert svg.startswith(b"<?xml") and b"CPU profile of the flight recorder" in svg, figures
    assert len(health) >= 3, figures
    assert stall < took * 0.6, figures
    assert max(health) < took * 0.6, figures
