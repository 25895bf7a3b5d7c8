"""Service.stop at agent shutdown: no probe task outlives it, even one that ignores a stop."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.probes import ProbeRequest, Service
from agent.probes._model import PerfProbePlan
from agent.probes._probe import Probe
from agent.probes._stream import EventStream
from agent.settings import Settings


def test_stop_cancels_a_probe_that_does_not_end(tmp_path: Path) -> None:
    async def scenario() -> bool:
        svc = Service(Settings(data_dir=tmp_path))
        stuck = Probe(
            id="0123abcd",
            request=ProbeRequest(pid=1, function="f"),
            spec=None,
            backend="perf-probe",
            backend_reason="",
            plan=PerfProbePlan(commands=[], cleanup=[]),
            stream=EventStream(capacity=1, rate=1),
            duration_s=1.0,
            max_events=1,
        )
        stuck.task = asyncio.create_task(asyncio.sleep(3600))  # deaf to the stop request
        svc._probes[stuck.id] = stuck
        await svc.stop(grace=0.05)
        # Checked here: asyncio.run would cancel a leftover task itself on the way out.
        return stuck.task.cancelled()

    assert asyncio.run(scenario())
