"""The flight recorder: low-rate on-CPU sampling kept in a bounded ring, any interval on demand.

:class:`FlightRecorder` (constructed and stopped by :mod:`agent.app`, driven by
the ``/recorder`` router) runs one bpftrace (:func:`agent.profiling.offcpu.sampler_program`:
``profile:hz:N`` over every process of the agent's PID namespace, so processes
started later are sampled from their first tick) that prints its counts every
second. Each second becomes a bucket of folded stacks, symbolized as it arrives
(so a process that exits later keeps its names), filtered to the target (a pid,
pids, a container, or the pod without the agent), and appended to the ring.

The ring is bounded twice: buckets older than ``retain_s`` are dropped, and so
are the oldest while the ring's size exceeds ``max_bytes``. The size is the
folded text the buckets hold (each stack's bytes + 16 per entry), an upper
bound of what they take, since stack strings are shared between buckets. The
ring is in memory only: nothing is written to disk, and it ends with the
recorder (DELETE) or the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ConfigDict, Field

from agent import _proc, procfs, symbols
from agent.errors import Conflict, Invalid, NotFound, Unavailable
from agent.jobs import Job, write_atomic
from agent.profiling._artifacts import FOLDED, KIND
from agent.profiling._service import Service
from agent.profiling.collapse import format_folded
from agent.profiling.offcpu import argv, fold, parse_output, sampler_program
from agent.profiling.planner import Plan, Targets, in_range

log = logging.getLogger(__name__)

DEFAULT_FREQUENCY_HZ = 19
MAX_FREQUENCY_HZ = 99
DEFAULT_RETAIN_S = 600.0
DEFAULT_MAX_BYTES = 16 << 20
MIN_RETAIN_S = 2.0
MIN_BYTES = 256
_ENTRY_OVERHEAD = 16

RecorderState = Literal["stopped", "starting", "recording", "failed"]


class RecorderRequest(Targets):
    """The body of ``POST /recorder``. At most one of pid, pids, container; none = the pod."""

    model_config = ConfigDict(extra="forbid")

    frequency_hz: int = Field(
        default=DEFAULT_FREQUENCY_HZ,
        description=f"samples per second per CPU (1 .. {MAX_FREQUENCY_HZ})",
    )
    retain_s: float = Field(default=DEFAULT_RETAIN_S, description="the ring's time bound")
    max_bytes: int = Field(default=DEFAULT_MAX_BYTES, description="the ring's size bound")


@dataclass
class _Bucket:
    start: int  # the second it covers: [start, start + 1)
    stacks: dict[str, int]
    size: int


@dataclass
class _Run:
    request: RecorderRequest
    started_at: float = field(default_factory=time.time)
    ring: deque[_Bucket] = field(default_factory=deque)
    size: int = 0
    samples: int = 0
    evicted: int = 0
    state: RecorderState = "starting"
    message: str = ""
    task: asyncio.Task[None] | None = None
    child: _proc.Child | None = None
    containers: dict[int, str | None] = field(default_factory=dict)


class FlightRecorder:
    def __init__(self, *, max_retain_s: float, max_bytes: int) -> None:
        self.max_retain_s = max_retain_s
        self.max_bytes = max_bytes
        self._run: _Run | None = None
        self._strings: dict[str, str] = {}  # one copy of each stack text for every bucket

    def limits(self) -> dict[str, object]:
        """What /capabilities says: both bounds of the ring, and the defaults."""
        return {
            "default_frequency_hz": DEFAULT_FREQUENCY_HZ,
            "max_frequency_hz": MAX_FREQUENCY_HZ,
            "default_retain_s": min(DEFAULT_RETAIN_S, self.max_retain_s),
            "max_retain_s": self.max_retain_s,
            "default_max_bytes": min(DEFAULT_MAX_BYTES, self.max_bytes),
            "max_bytes": self.max_bytes,
            "storage": "memory only",
        }

    async def capabilities(self) -> dict[str, object]:
        tool = _proc.which("bpftrace")
        state = self.status()
        return {
            "available": tool is not None,
            "reason": "bpftrace profile:hz over the pod's PID namespace"
            if tool
            else "bpftrace is not installed",
            **self.limits(),
            "state": state["state"],
            "window": state["window"],
        }

    # --- API -------------------------------------------------------------
    async def start(self, req: RecorderRequest) -> dict[str, Any]:
        in_range(req.frequency_hz, low=1, high=MAX_FREQUENCY_HZ, field="frequency_hz", unit="Hz")
        in_range(req.retain_s, low=MIN_RETAIN_S, high=self.max_retain_s, field="retain_s", unit="s")
        in_range(req.max_bytes, low=MIN_BYTES, high=self.max_bytes, field="max_bytes", unit="bytes")
        if self._run is not None and self._run.state in ("starting", "recording"):
            raise Conflict("the flight recorder is already recording: DELETE /recorder first")
        if req.pid is not None:
            procfs.require_pid(req.pid)
        for p in req.pids or []:
            procfs.require_pid(p)
        if req.container is not None:
            await asyncio.to_thread(procfs.pids_of_container, req.container)  # 404 naming them
        if _proc.which("bpftrace") is None:
            raise Unavailable("the flight recorder needs bpftrace, which is not installed here")
        run = _Run(request=req)
        self._run = run
        self._strings.clear()
        run.task = asyncio.create_task(self._record(run), name="flight-recorder")
        return self.status()

    def status(self) -> dict[str, Any]:
        run = self._run
        if run is None:
            return {"state": "stopped", "window": None}
        window = None
        if run.ring:
            window = {"start": float(run.ring[0].start), "end": float(run.ring[-1].start + 1)}
        return {
            "state": run.state,
            "message": run.message,
            "request": run.request.model_dump(exclude_none=True),
            "started_at": run.started_at,
            "window": window,
            "bytes": run.size,
            "buckets": len(run.ring),
            "samples": run.samples,
            "evicted_buckets": run.evicted,
        }

    async def stop(self) -> None:
        """DELETE /recorder, and agent shutdown: bpftrace stopped and reaped, the ring dropped."""
        run, self._run = self._run, None
        self._strings.clear()
        if run is None:
            return
        if run.task is not None and not run.task.done():
            run.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run.task

    def interval(self, start: float, end: float) -> tuple[dict[str, int], float, float]:
        """Folded stacks of ``[start, end)`` (whole seconds covering it), with the bounds used."""
        run = self._run
        if run is None:
            raise Conflict("the flight recorder is not running: start it with POST /recorder")
        if not run.ring:
            raise Conflict("the flight recorder has recorded nothing yet: ask again in a second")
        w0, w1 = float(run.ring[0].start), float(run.ring[-1].start + 1)
        window = {"window": {"start": w0, "end": w1}}
        if not start < end:
            raise Invalid(f"from ({start:g}) must be before to ({end:g})", field="from", **window)
        if start < w0 - 1 or end > w1 + 1:
            raise Invalid(
                f"[{start:g}, {end:g}) is outside the retained window [{w0:g}, {w1:g}): "
                "ask for an interval inside it (Unix times in seconds)",
                field="from",
                **window,
            )
        lo, hi = math.floor(start), math.ceil(end)
        out: dict[str, int] = {}
        for b in run.ring:
            if lo <= b.start < hi:
                for stack, n in b.stacks.items():
                    out[stack] = out.get(stack, 0) + n
        return out, float(max(lo, w0)), float(min(hi, w1))

    async def save_interval(self, svc: Service, start: float, end: float) -> Job:
        """Keep an interval as a profile (a CPU profile's outputs and id), so it can be
        fetched later and diffed against a capture or another interval."""
        stacks, lo, hi = self.interval(start, end)
        hz = self.frequency_hz
        the_plan = Plan(
            argv=[],
            pids=[],
            target=f"the flight recorder's [{lo:g}, {hi:g})",
            duration_s=hi - lo,
            frequency_hz=hz,
            call_graph="fp",
            call_graph_reason="bpftrace's profile probe walks user stacks by frame pointers",
            timeout_s=0,
            unresolved=[],
        )
        job = svc.jobs.create(KIND, {"type": "cpu", "source": "recorder", "from": lo, "to": hi})
        job.result = {
            "phase": "done",
            "plan": the_plan.model_dump(),
            "recording_started_at": lo,
            "recording_finished_at": hi,
            "samples": sum(stacks.values()),
            "folded_samples": sum(stacks.values()),
        }

        async def write(job: Job) -> None:
            await asyncio.to_thread(write_atomic, job.artifact(FOLDED), format_folded(stacks))
            await asyncio.to_thread(svc._render_all, job, the_plan, stacks)
            job.result["artifacts"] = sorted(
                p.name for p in job.dir.iterdir() if p.name != "job.json"
            )

        svc.jobs.start(job, write)
        await svc.wait(job)
        return job

    @property
    def frequency_hz(self) -> int:
        return self._run.request.frequency_hz if self._run else DEFAULT_FREQUENCY_HZ

    # --- the recording -------------------------------------------------------
    async def _record(self, run: _Run) -> None:
        program = sampler_program(pid_ns=procfs.own_pid_ns(), frequency_hz=run.request.frequency_hz)
        try:
            run.child = await _proc.Child.start(argv(program))
            assert run.child.proc.stdout is not None
            errors = asyncio.ensure_future(_proc.drain_tail(run.child.proc.stderr, keep=16384))
            run.state = "recording"
            async for lines in _proc.line_batches(run.child.proc.stdout):
                for line in lines:
                    if line.startswith(b'{"type": "map"'):
                        await self._add(run, line.decode("utf-8", "replace"))
            rc = await run.child.wait(timeout=10)
            err = (await errors).decode("utf-8", "replace")
            run.state = "failed"
            run.message = f"bpftrace exited: {_proc.tool_message(err, rc)}"
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the recorder never dies silently
            log.exception("flight recorder failed")
            run.state, run.message = "failed", str(e) or type(e).__name__
        finally:
            if run.child is not None:
                await run.child.stop(signal.SIGINT, grace=5)

    def _wanted(self, run: _Run, pid: int, own: set[int]) -> bool:
        req = run.request
        if req.pid is not None:
            return pid == req.pid
        if req.pids is not None:
            return pid in req.pids
        if pid in own:
            return False
        if req.container is None:
            return True
        if pid not in run.containers:
            try:
                run.containers[pid] = procfs.process_info(pid).container
            except NotFound:
                run.containers[pid] = None
        return run.containers[pid] == req.container

    def _bucket(self, run: _Run, text: str) -> _Bucket:
        req = run.request
        # The agent's own processes only matter when the target is the pod or a container.
        own = procfs.own_tree() | {os.getpid()} if req.pid is None and req.pids is None else set()
        parsed = parse_output(text, map_name="@s")
        # The pid -> container cache holds only live processes: bounded however many
        # come and go, and a reused pid is looked up afresh.
        seen = {s.pid for s in parsed}
        for pid in [p for p in run.containers if p not in seen]:
            if not procfs.pid_exists(pid):
                del run.containers[pid]
        stacks = [s for s in parsed if self._wanted(run, s.pid, own)]
        folded = fold(stacks, names=symbols.function_names, divisor=1)
        interned = {self._strings.setdefault(k, k): v for k, v in folded.items()}
        size = sum(len(k.encode()) + _ENTRY_OVERHEAD for k in interned)
        return _Bucket(start=int(time.time()) - 1, stacks=interned, size=size)

    async def _add(self, run: _Run, text: str) -> None:
        bucket = await asyncio.to_thread(self._bucket, run, text)
        if self._run is not run:
            return
        run.ring.append(bucket)
        run.size += bucket.size
        run.samples += sum(bucket.stacks.values())
        horizon = time.time() - run.request.retain_s
        while run.ring and (run.ring[0].start + 1 <= horizon or run.size > run.request.max_bytes):
            old = run.ring.popleft()
            run.size -= old.size
            run.evicted += 1
        if len(self._strings) > 4 * sum(len(b.stacks) for b in run.ring) + 1024:
            # Drop texts no bucket uses any more (the table must not outgrow the ring).
            live = {k for b in run.ring for k in b.stacks}
            self._strings = {k: k for k in live}
