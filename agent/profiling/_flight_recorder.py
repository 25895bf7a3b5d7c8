"""The flight recorder: low-rate on-CPU sampling kept in a bounded ring, any interval on demand.

:class:`FlightRecorder` (constructed and stopped by :mod:`agent.app`, driven by
the ``/recorder`` router, read by continuous-profile sinks through
:meth:`FlightRecorder.samples`) runs:

* one bpftrace (:func:`agent.profiling.offcpu_fold.sampler_program`: ``profile:hz:N``
  over every process of the agent's PID namespace, so processes started later are
  sampled from their first tick) that prints its counts just after each wall-clock
  second. Each second is symbolized as it arrives (so a process that exits later
  keeps its names; JIT frames through the process's perf map,
  :mod:`agent.profiling._jitnames`) and filtered to the target (a pid, pids, a
  container, or the pod without the agent);
* a watcher that, every second, finds the Python processes in the target (started
  before or after the recorder) and keeps a loop of one-second py-spy runs on each
  (:mod:`agent.profiling._flight_recorder_python`): their whole Python stacks replace the
  interpreter frames bpftrace sees. It also asks each recorded JVM for its perf map
  (jattach, when installed), at first sight, then 2, 4, 8... s later (the JIT is
  compiling) and every ``JVM_MAP_EVERY_S`` after, so JIT-compiled Java methods are
  named as in on-demand profiles.

Both feed one :class:`agent.profiling._flight_ring.Ring` (what is complete, the bounds,
the queries). With each second of stacks goes each recorded process's RSS (read
from /proc/PID/statm as the second is handled): an interval's answer says how
memory moved over the same seconds.

The ring is in memory only: nothing is written to disk but py-spy's one-second
files (a private directory, removed with the recorder), and it ends with the
recorder (DELETE) or the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from agent import _proc, procfs
from agent.errors import Conflict, Invalid, NotFound, Unavailable
from agent.jobs import Later, later, write_atomic
from agent.profiling import _pyspy_record, offcpu_fold
from agent.profiling._artifacts import FOLDED, KIND
from agent.profiling._flight_recorder_python import record_second
from agent.profiling._flight_ring import (
    GroupBy,
    GroupSamples,
    ProcessMeta,
    Ring,
    RssTrend,
    Slice,
    merge,
    rss_trends,
)
from agent.profiling._jitnames import JitNames
from agent.profiling._result import ProfileResult, RssTrendView
from agent.profiling._service import ProfileJob, Service
from agent.profiling.offcpu_fold import argv, fold, parse_output, sampler_program
from agent.profiling.planner import Plan, Targets, in_range
from agent.settings import get_settings
from agent.symbolize.resolver import Symbolizer, debuginfod_cache
from agent.symbolize.ustacks import UserStacks
from tracecar_formats.collapse import format_folded

__all__ = ["FlightRecorder", "GroupSamples", "RecorderRequest", "RssTrend", "Slice", "when"]

log = logging.getLogger(__name__)

DEFAULT_FREQUENCY_HZ = 19
MAX_FREQUENCY_HZ = 99
DEFAULT_RETAIN_S = 600.0
DEFAULT_MAX_BYTES = 16 << 20
MIN_RETAIN_S = 2.0
MIN_BYTES = 256
JVM_MAP_EVERY_S = 60.0
NAMES_RENEW_S = 60.0
"""The sampler's symbolizer is renewed this often (libraries loaded or unloaded since)."""
PYSPY_GIVE_UP_AFTER = 5
"""Consecutive failed py-spy runs after which a process is left to the sampler."""
PYSPY_GIVE_UP_BEFORE_FIRST = 30
"""The same, before py-spy has read a process once (its interpreter may be starting)."""
_MAX_LEAD_S = 0.9
_MAX_INFLIGHT = 3
"""py-spy runs of one process at once (each lasts about a second; more: stuck)."""
_MISSING = ProcessMeta(comm="", container=None, runtime=None)

RecorderState = Literal["stopped", "starting", "recording", "failed"]


def when(t: float) -> str:
    """A Unix time as messages print it: in full (never ``1.79657e+09``) and ISO 8601
    (left out for a time no calendar date has, such as 1e20)."""
    full = f"{t:.3f}".rstrip("0").rstrip(".")
    try:
        iso = datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="milliseconds")
    except (OverflowError, ValueError, OSError):
        return full
    return f"{full} ({iso.replace('+00:00', 'Z')})"


class RecorderRequest(Targets):
    """The body of ``POST /recorder``. At most one of pid, pids, container; none = the pod."""

    model_config = ConfigDict(extra="forbid")

    frequency_hz: int = Field(
        default=DEFAULT_FREQUENCY_HZ,
        description=f"samples per second per CPU (1 .. {MAX_FREQUENCY_HZ})",
    )
    retain_s: float = Field(default=DEFAULT_RETAIN_S, description="the ring's time bound")
    max_bytes: int = Field(default=DEFAULT_MAX_BYTES, description="the ring's size bound")
    python: bool = Field(
        default=True,
        description="Python processes sampled by py-spy (whole Python stacks); "
        "false: by bpftrace like the rest (interpreter frames)",
    )
    rss: StrictBool = Field(
        default=True,
        description="each recorded process's RSS kept with each second (GET "
        "/recorder/memory); false: stacks only",
    )


@dataclass
class _Python:
    """One Python process's py-spy loop."""

    comm: str
    task: asyncio.Task[None] | None = None
    state: Literal["recording", "ended", "gave up"] = "recording"
    seconds: int = 0
    failures: int = 0
    message: str = ""
    lead_s: float = 0.2  # py-spy's start-up time: the next run starts that much early
    late: int = 0  # runs not attached by their second's end (killed; the sampler's stand)


@dataclass
class _Run:
    request: RecorderRequest
    ring: Ring
    started_at: float = field(default_factory=time.time)
    state: RecorderState = "starting"
    message: str = ""
    task: asyncio.Task[None] | None = None
    watcher: asyncio.Task[None] | None = None
    child: _proc.Child | None = None
    meta: dict[int, ProcessMeta | None] = field(default_factory=dict)  # live pids, read once
    exes: dict[int, str] = field(default_factory=dict)  # what each live pid runs
    python: dict[int, _Python] = field(default_factory=dict)
    jvm_asked: dict[int, tuple[int, float]] = field(default_factory=dict)  # asks, last
    jit: JitNames = field(default_factory=JitNames)
    scratch: Path | None = None
    sampler_delay_s: float | None = None  # how late bpftrace's last second arrived
    sampler_delay_max_s: float = 0.0
    python_delay_max_s: float = 0.0  # how late a py-spy run's second arrived, at most
    side_tasks: set[asyncio.Task[None]] = field(default_factory=set)  # jattach asks
    rss: procfs.RssReader = field(default_factory=procfs.RssReader)  # statm kept open
    names: UserStacks | None = None  # the sampler's symbolizer (used in one thread at a time)
    names_since: float = 0.0
    names_stale: bool = False  # a process exited or exec'd: its pid's names may lie
    leaf_fixes: int = 0  # frameless leaves' callers put back, by former symbolizers


def _describe(pid: int) -> ProcessMeta | None:
    """A process's comm, container and runtime (None: it is gone)."""
    try:
        info = procfs.process_info(pid)
    except NotFound:
        return None
    return ProcessMeta(comm=info.comm, container=info.container, runtime=info.runtime)


def _exe(pid: int) -> str:
    try:
        return os.readlink(procfs.PROC / str(pid) / "exe")
    except OSError:
        return ""


class Window(BaseModel):
    start: float
    end: float


class PythonSampling(BaseModel):
    """How one Python process's stacks are sampled (py-spy, or bpftrace after it failed)."""

    comm: str
    profiler: Literal["py-spy", "bpftrace"]
    state: Literal["recording", "ended", "gave up"]
    seconds: int = Field(description="seconds py-spy's stacks were kept for")
    failures: int = Field(description="py-spy's failures in a row (it gives up after some)")
    late: int = Field(description="seconds py-spy attached too late for (bpftrace's stood)")
    message: Later[str] = later("py-spy's last failure, in its own words")


class PushedInterval(BaseModel):
    start: float = Field(description="Unix time, seconds")
    end: float


class ContinuousPushes(BaseModel):
    """The recorder's intervals pushed to the profile store one after another
    (:mod:`agent.sinks` pushes them; the recorder's status shows how it goes)."""

    enabled: bool = Field(description="the pushes run (they end with the recorder)")
    interval_s: float
    sink: str = Field(description="the store they go to")
    intervals_pushed: int
    profiles_pushed: int
    last_interval: PushedInterval | None
    recent_intervals: list[tuple[float, float, int]] = Field(
        description="[start, end, profiles spooled] of the last intervals, oldest first"
    )
    last_error: str | None


class RecorderStatus(BaseModel):
    """``GET /recorder``: the state, the retained window (Unix seconds), its size, and
    how each Python process is sampled (stopped: the state and no window, only)."""

    state: str
    window: Window | None
    message: str | None = None
    request: dict[str, Any] | None = None
    started_at: float | None = None
    complete_until: int | None = Field(default=None, description="every second before is final")
    lag_s: float | None = Field(default=None, description="how far behind real time")
    sampler_delay_s: float | None = None
    sampler_delay_max_s: float | None = Field(
        default=None, description="how late bpftrace's seconds arrived after they ended, at most"
    )
    python_delay_max_s: float | None = Field(
        default=None, description="how late py-spy's seconds arrived after they ended, at most"
    )
    leaf_callers_recovered: int | None = Field(
        default=None, description="frameless leaves' callers put back in the sampler's stacks"
    )
    bytes: int | None = None
    buckets: int | None = None
    samples: int | None = None
    evicted_buckets: int | None = None
    trimmed_samples: int | None = None
    late_samples: int | None = None
    python: dict[str, PythonSampling] | None = Field(
        default=None, description="pid -> how its Python stacks are sampled"
    )
    rss: list[RssTrendView] | None = Field(
        default=None,
        description="each recorded process's RSS over the window: first, last, min, max, "
        "growth per minute (GET /recorder/memory: one point a second)",
    )
    push: ContinuousPushes | None = Field(
        default=None, description="the continuous pushes to the profile store (null: none)"
    )


class RssSeries(RssTrendView):
    """A process's RSS trend over the interval, and each second's reading."""

    series: list[tuple[int, int]] = Field(description="[Unix second, bytes], one a second")


class RecorderMemory(BaseModel):
    """``GET /recorder/memory``: the retained part of the asked interval and each
    recorded process's RSS over it, biggest growth first."""

    from_: float = Field(
        serialization_alias="from", description="Unix seconds: the part retained, from"
    )
    to: float
    requested_from: float
    requested_to: float
    processes: list[RssSeries]


class FlightRecorder:
    def __init__(self, *, max_retain_s: float, max_bytes: int) -> None:
        self.max_retain_s = max_retain_s
        self.max_bytes = max_bytes
        self._run: _Run | None = None

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
            + ("; py-spy for Python processes" if _pyspy_record.find() else "")
            if tool
            else "bpftrace is not installed",
            "python": "py-spy (whole Python stacks)"
            if _pyspy_record.find()
            else "py-spy is not installed: Python processes show interpreter frames",
            **self.limits(),
            "state": state.state,
            "window": None if state.window is None else state.window.model_dump(),
        }

    # --- the capability: nothing runs until POST /recorder (or continuous profiling) ---
    async def start(self) -> None:
        """The ring starts with :meth:`record`, not with the agent."""

    def busy(self) -> bool:
        """The recorder runs until stopped: counting it would keep an idle agent forever."""
        return False

    # --- API -------------------------------------------------------------
    async def record(self, req: RecorderRequest) -> RecorderStatus:
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
        if self._run is not None:
            await self.stop()  # a failed run: its tasks and scratch go first
        ring = Ring(retain_s=req.retain_s, max_bytes=req.max_bytes, frequency_hz=req.frequency_hz)
        run = _Run(request=req, ring=ring)
        run.scratch = Path(tempfile.mkdtemp(prefix="tracecar-recorder-"))
        self._run = run
        run.task = asyncio.create_task(self._record(run), name="flight-recorder")
        run.watcher = asyncio.create_task(self._watch(run), name="flight-recorder-watch")
        return self.status()

    async def status_with_rss(self) -> RecorderStatus:
        """:meth:`status` and each process's RSS trend over the whole window (``GET
        /recorder``): a pass over every bucket, in a worker thread on a frozen copy."""
        status = self.status()
        run = self._run
        w = run.ring.window() if run is not None else None
        if run is None or w is None:
            status.rss = [] if run is not None else None
            return status
        ring, lo, hi = run.ring.frozen(), int(w[0]), int(w[1])
        trends = await asyncio.to_thread(lambda: rss_trends(ring.rss(lo, hi), ring.meta))
        status.rss = [RssTrendView.of(t) for t in trends]
        return status

    def status(self) -> RecorderStatus:
        """The recorder's state, without the RSS trends (:meth:`status_with_rss`): cheap
        enough for the loop, which the continuous pushes ask every interval."""
        run = self._run
        if run is None:
            return RecorderStatus(state="stopped", window=None)
        ring = run.ring
        w = ring.window()
        lag = ring.lag_s(time.time())
        return RecorderStatus(
            state=run.state,
            message=run.message,
            request=run.request.model_dump(exclude_none=True),
            started_at=run.started_at,
            window=None if w is None else Window(start=w[0], end=w[1]),
            complete_until=ring.complete_until,
            lag_s=None if lag is None else round(lag, 3),
            sampler_delay_s=None if run.sampler_delay_s is None else round(run.sampler_delay_s, 3),
            # Where the lag comes from: the latest seconds' arrival after they ended.
            sampler_delay_max_s=round(run.sampler_delay_max_s, 3),
            python_delay_max_s=round(run.python_delay_max_s, 3),
            bytes=ring.size,
            buckets=len(ring.buckets),
            samples=ring.samples,
            evicted_buckets=ring.evicted,
            trimmed_samples=ring.trimmed_samples,
            late_samples=ring.late_samples,
            leaf_callers_recovered=run.leaf_fixes
            + (run.names.leaf_fixes if run.names is not None else 0),
            python={
                str(pid): PythonSampling(
                    comm=p.comm,
                    profiler="py-spy" if p.state == "recording" else "bpftrace",
                    state=p.state,
                    seconds=p.seconds,
                    failures=p.failures,
                    late=p.late,
                    message=p.message or None,
                )
                for pid, p in sorted(run.python.items())
            },
        )

    async def stop(self) -> None:
        """DELETE /recorder, and agent shutdown: bpftrace and every py-spy stopped and
        reaped, the ring and the scratch directory dropped."""
        run, self._run = self._run, None
        if run is None:
            return
        tasks = [
            run.task,
            run.watcher,
            *(p.task for p in run.python.values()),
            *run.side_tasks,
        ]
        for t in tasks:
            if t is not None and not t.done():
                t.cancel()
        for t in tasks:
            if t is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        run.rss.close()
        if run.scratch is not None:
            await asyncio.to_thread(shutil.rmtree, run.scratch, True)

    def _running(self) -> _Run:
        run = self._run
        if run is None:
            raise Conflict("the flight recorder is not running: start it with POST /recorder")
        if run.ring.window() is None:
            raise Conflict("the flight recorder has recorded nothing yet: ask again in a second")
        return run

    def _clip(self, run: _Run, start: float, end: float) -> tuple[int, int]:
        w = run.ring.window()
        assert w is not None
        window = {"window": {"start": w[0], "end": w[1]}}
        if not (math.isfinite(start) and math.isfinite(end)):
            raise Invalid("from and to must be finite Unix times in seconds", field="from")
        if not start < end:
            raise Invalid(
                f"from ({when(start)}) must be before to ({when(end)})", field="from", **window
            )
        clipped = run.ring.clip(start, end)
        if clipped is None:
            raise Invalid(
                f"[{when(start)}, {when(end)}) is wholly outside the retained window "
                f"[{when(w[0])}, {when(w[1])}): ask for an interval that overlaps it "
                "(Unix times in seconds)",
                field="from",
                **window,
            )
        return clipped

    async def merged(self, start: float, end: float) -> Slice:
        """Folded stacks of the retained part of ``[start, end)`` (whole seconds covering
        it). Only the checks (the 422s) and a copy of the ring run on the loop; every
        pass over the buckets (a day is 86,400), the merge included, runs in a worker
        thread. 422 only when it is inverted or wholly outside the retained window."""
        run = self._running()
        lo, hi = self._clip(run, start, end)
        return await asyncio.to_thread(_slice, run.ring.frozen(), lo, hi, start, end)

    async def memory(self, start: float, end: float) -> RecorderMemory:
        """``GET /recorder/memory``: each recorded process's RSS over the retained part
        of ``[start, end)``: its trend, and the series (one point a second), read in a
        worker thread as :meth:`merged` is."""
        run = self._running()
        lo, hi = self._clip(run, start, end)
        return await asyncio.to_thread(_memory, run.ring.frozen(), lo, hi, start, end)

    # --- for continuous-profile sinks ------------------------------------------------
    def complete_until(self) -> int | None:
        """Every second before this Unix time is final: :meth:`samples` of an interval
        ending at or before it answers the same now and later (while retained). None
        when nothing is recorded yet (or the recorder is stopped). It trails real time
        by ``GET /recorder``'s ``lag_s`` (about a second)."""
        run = self._run
        return None if run is None else run.ring.complete_until

    def samples(self, *, start: int, end: int, by: GroupBy = "group") -> list[GroupSamples]:
        """The samples of the closed-open interval ``[start, end)`` (Unix seconds), one
        :class:`GroupSamples` per process group: a container's processes of one runtime
        (``by="group"``), or one process (``by="pid"``). Each has the interval's real
        start and duration (clipped to what is retained and complete), the recorder's
        rate, and folded stacks already symbolized (Python frames from py-spy, JIT
        names from perf maps), root first. Groups without samples are left out.

        Empty when the recorder is stopped, nothing of ``[start, end)`` is retained,
        or it is inverted; never raises. Ask only up to :meth:`complete_until` for an
        answer that will not change.
        """
        run = self._run
        if run is None or not start < end:
            return []
        clipped = run.ring.clip(start, end)
        if clipped is None:
            return []
        return run.ring.groups(clipped[0], clipped[1], by=by)

    async def save_interval(self, svc: Service, start: float, end: float) -> ProfileJob:
        """Keep an interval as a profile (a CPU profile's outputs and id), so it can be
        fetched later and diffed against a capture or another interval."""
        part = await self.merged(start, end)
        stacks, lo, hi = part.stacks, part.start, part.end
        hz = self.frequency_hz
        the_plan = Plan(
            argv=[],
            pids=[],
            target=f"the flight recorder's [{when(lo)}, {when(hi)})",
            duration_s=hi - lo,
            frequency_hz=hz,
            call_graph="fp",
            call_graph_reason="bpftrace's profile probe walks user stacks by frame pointers; "
            "Python processes: py-spy reads the interpreter's frames",
            timeout_s=0,
            unresolved=[],
        )
        result = ProfileResult(
            phase="done",
            plan=the_plan,
            recording_started_at=lo,
            recording_finished_at=hi,
            requested_from=start,
            requested_to=end,
            clipped=part.clipped,
            samples=sum(stacks.values()),
            folded_samples=sum(stacks.values()),
            rss=[RssTrendView.of(t) for t in part.rss],
        )
        job = svc.jobs.create(
            KIND, {"type": "cpu", "source": "recorder", "from": lo, "to": hi}, result=result
        )

        async def write(job: ProfileJob) -> None:
            await asyncio.to_thread(write_atomic, job.artifact(FOLDED), format_folded(stacks))
            await asyncio.to_thread(svc._render_all, job, the_plan, stacks)
            job.result.artifacts = sorted(p.name for p in job.dir.iterdir() if p.name != "job.json")

        svc.jobs.start(job, write)
        await svc.wait(job)
        return job

    @property
    def frequency_hz(self) -> int:
        return self._run.request.frequency_hz if self._run else DEFAULT_FREQUENCY_HZ

    # --- the sampler ---------------------------------------------------------------
    async def _record(self, run: _Run) -> None:
        program = sampler_program(
            pid_ns=procfs.own_pid_ns(),
            frequency_hz=run.request.frequency_hz,
            wall_offset_ns=time.time_ns() - time.monotonic_ns(),
            pids=[run.request.pid] if run.request.pid is not None else run.request.pids or [],
        )
        try:
            # Addresses only: the agent names the frames itself (ELF symbols, perf maps).
            # bpftrace's own naming re-reads a process's symbols for every stack it
            # prints when it can see the process (a host run), which took minutes per
            # second for a Node app.
            env = {**os.environ, **offcpu_fold.ENV, "BPFTRACE_NO_USER_SYMBOLS": "1"}
            run.child = await _proc.Child.start(argv(program), env=env)
            assert run.child.proc.stdout is not None
            errors = asyncio.ensure_future(_proc.drain_tail(run.child.proc.stderr, keep=16384))
            run.state = "recording"
            second = 0
            text = ""
            async for lines in _proc.line_batches(run.child.proc.stdout):
                for line in lines:
                    if line.startswith(b'{"type": "printf"'):
                        # "SECOND", the map (none when empty), "end SECOND": the second
                        # is added at its end line, samples or not, so the ring moves on.
                        data = line.split(b'"data": "', 1)[-1].split(b"\\n", 1)[0]
                        with contextlib.suppress(ValueError):
                            if data.startswith(b"end "):
                                if second > 0 and int(data[4:]) == second:
                                    await self._add(run, second, text)
                                second, text = 0, ""
                            else:
                                second, text = int(data), ""
                    elif line.startswith(b'{"type": "map"') and second > 0:
                        text = line.decode("utf-8", "replace")
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

    def _wanted(
        self, run: _Run, pid: int, own: set[int], meta: Callable[[int], ProcessMeta | None]
    ) -> bool:
        """In the target? ``meta`` is asked only when the answer needs it (a container)."""
        req = run.request
        if req.pid is not None:
            return pid == req.pid
        if req.pids is not None:
            return pid in req.pids
        if pid in own:
            return False
        if req.container is None:
            return True
        m = meta(pid)
        return m is not None and m.container == req.container

    def _own(self, run: _Run) -> set[int]:
        # The agent's own processes only matter when the target is the pod or a container.
        req = run.request
        return procfs.own_tree() | {os.getpid()} if req.pid is None and req.pids is None else set()

    def _meta_of(
        self, run: _Run, pid: int, found: dict[int, ProcessMeta | None]
    ) -> ProcessMeta | None:
        # .get, once: the event loop may change the table meanwhile (this runs in a thread).
        meta = run.meta.get(pid, _MISSING)
        if meta is not _MISSING:
            return meta
        if pid not in found:
            found[pid] = _describe(pid)
        return found[pid]

    def _bucket(
        self, run: _Run, text: str
    ) -> tuple[dict[int, dict[str, int]], dict[int, ProcessMeta | None], dict[int, int]]:
        """One second of bpftrace's map -> folded stacks per wanted pid, what was
        learnt of processes not seen before (applied on the event loop, which owns
        the tables), and the RSS of every recorded process (on CPU in that second or
        not: a leaking process may be mostly asleep). Runs in a thread."""
        own = self._own(run)
        found: dict[int, ProcessMeta | None] = {}
        parsed = parse_output(text, map_name="@s")
        stacks = [
            s
            for s in parsed
            if self._wanted(run, s.pid, own, lambda pid: self._meta_of(run, pid, found))
        ]
        for pid in {s.pid for s in stacks}:
            self._meta_of(run, pid, found)  # each recorded process's group, read once

        names = self._names(run)
        per_pid: dict[int, dict[str, int]] = {}
        for pid in sorted({s.pid for s in stacks}):
            folded = fold([s for s in stacks if s.pid == pid], stack_names=names.frames, divisor=1)
            if folded:
                per_pid[pid] = folded
        rss: dict[int, int] = {}
        if run.request.rss:
            # The named pids from the first second; a container's or the pod's once the
            # watcher has seen them (it reads each new process once).
            req = run.request
            named = [req.pid] if req.pid is not None else list(req.pids or [])
            known = [p for p, m in list(run.meta.items()) if m is not None]
            for pid in {*per_pid, *named, *known}:
                if pid in per_pid or self._wanted(run, pid, own, run.meta.get):
                    n = run.rss.read(pid)
                    if n is not None:
                        rss[pid] = n
            run.rss.keep_only(set(rss))
        return per_pid, found, rss

    def _names(self, run: _Run) -> UserStacks:
        """The sampler's symbolizer (the CPU profiles' names: pclntab, debug files and
        debuginfod, inlined frames, frameless leaves' callers; JIT frames from perf
        maps). A fresh one after a process exited or exec'd (the old one's objects are
        keyed by pid) and every ``NAMES_RENEW_S`` (libraries come and go). Runs in the
        sampler's thread, one second at a time."""
        now = time.monotonic()
        names = run.names
        if names is None or run.names_stale or now - run.names_since > NAMES_RENEW_S:
            if names is not None:
                run.leaf_fixes += names.leaf_fixes
            run.names_stale = False
            jit = run.jit
            names = run.names = UserStacks(
                Symbolizer(debuginfod=debuginfod_cache(get_settings())),
                unknown=lambda pid, a: jit.resolve(pid, [a], ["[unknown]"])[0],
            )
            run.names_since = now
        return names

    async def _add(self, run: _Run, second: int, text: str) -> None:
        run.sampler_delay_s = time.time() - (second + 1)
        run.sampler_delay_max_s = max(run.sampler_delay_max_s, run.sampler_delay_s)
        per_pid, found, rss = await asyncio.to_thread(self._bucket, run, text)
        if self._run is not run:
            return
        self._learn(run, found)
        run.ring.add_sampler(second, per_pid, rss)
        run.ring.commit(time.time())

    def _learn(self, run: _Run, found: dict[int, ProcessMeta | None]) -> None:
        for pid, meta in found.items():
            run.meta[pid] = meta
            if meta is not None:
                run.ring.describe(pid, meta)

    # --- the watcher: Python processes, JVMs' perf maps ------------------------------
    async def _watch(self, run: _Run) -> None:
        """Every second: new Python processes get a py-spy loop, JVMs are asked for
        their perf maps, exited processes are forgotten, late seconds are committed."""
        pyspy_path = _pyspy_record.find() if run.request.python else None
        jattach = _proc.which("jattach") is not None
        try:
            while self._run is run and run.state != "failed":
                found, gone, own = await asyncio.to_thread(self._scan, run)
                if gone or any(p in run.meta for p in found):
                    run.names_stale = True  # a pid's objects may be another program's now
                self._learn(run, found)
                for pid in gone:
                    run.meta.pop(pid, None)
                    run.exes.pop(pid, None)
                    run.jvm_asked.pop(pid, None)
                live = set(run.meta)
                run.jit.forget_except(live)
                now = time.monotonic()
                for pid, meta in list(run.meta.items()):
                    if meta is None or not self._wanted(run, pid, own, run.meta.get):
                        continue
                    py = run.python.get(pid)
                    if meta.runtime == "python" and pyspy_path and py is None:
                        py = _Python(comm=meta.comm)
                        run.python[pid] = py
                        py.task = asyncio.create_task(
                            self._python_loop(run, pid, py, pyspy_path), name=f"recorder-py-{pid}"
                        )
                    elif meta.runtime == "java" and jattach:
                        asks, last = run.jvm_asked.get(pid, (0, -math.inf))
                        # Soon after first sight the JIT has compiled little: ask again
                        # after 2, 4, 8... s, then every JVM_MAP_EVERY_S.
                        if now - last >= min(JVM_MAP_EVERY_S, 2.0 * 2**asks):
                            run.jvm_asked[pid] = (asks + 1, now)
                            # In the background: a slow JVM must not hold the watcher.
                            t = asyncio.create_task(self._ask_jvm(pid), name=f"recorder-jvm-{pid}")
                            run.side_tasks.add(t)
                            t.add_done_callback(run.side_tasks.discard)
                for pid in [p for p, py in run.python.items() if p not in live and py.task is None]:
                    del run.python[pid]  # exited, its loop over: forgotten
                run.ring.commit(time.time())
                await asyncio.sleep(1.0 - time.time() % 1.0 + 0.1)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the watcher never dies silently, nor takes the recorder down
            log.exception("flight recorder watcher failed")
            run.message = f"new Python processes and JVMs are no longer looked for: {e}"

    def _scan(self, run: _Run) -> tuple[dict[int, ProcessMeta | None], list[int], set[int]]:
        """Processes of the target not seen before, or that exec'd another program (read
        afresh), those gone, and the agent's own (py-spy's runs come and go every
        second: never read). Runs in a thread (it walks /proc)."""
        req = run.request
        pids = {int(p) for p in os.listdir(procfs.PROC) if p.isdigit()}
        own = self._own(run)
        if req.pid is not None or req.pids is not None:
            pids &= {req.pid} if req.pid is not None else set(req.pids or [])
        else:
            pids -= own
        found: dict[int, ProcessMeta | None] = {}
        known = set(run.meta)  # one copy: the event loop may change it meanwhile
        for pid in pids:
            exe = _exe(pid)
            if pid not in known or run.exes.get(pid) != exe:
                run.exes[pid] = exe
                found[pid] = _describe(pid)
        gone = [p for p in known if p not in pids]
        return found, gone, own

    async def _ask_jvm(self, pid: int) -> None:
        with contextlib.suppress(_proc.ProcError):
            await _proc.run(
                ["jattach", str(pid), "jcmd", "Compiler.perfmap"], timeout=15, check=False
            )

    async def _python_loop(self, run: _Run, pid: int, py: _Python, pyspy_path: str) -> None:
        """A py-spy run on ``pid`` for every second, each started ``lead_s`` before its
        second begins (whether the previous one has ended or not, so no second is
        skipped), until the process exits or py-spy keeps failing on it."""
        inflight: set[asyncio.Task[None]] = set()
        second = math.ceil(time.time() + py.lead_s)
        try:
            while self._run is run and py.state == "recording" and run.state != "failed":
                await asyncio.sleep(max(0.0, second - py.lead_s - time.time()))
                if len(inflight) < _MAX_INFLIGHT and run.ring.expect(second, pid):
                    t = asyncio.create_task(self._python_second(run, pid, py, pyspy_path, second))
                    inflight.add(t)
                    t.add_done_callback(inflight.discard)
                second += 1
                if second - py.lead_s < time.time() - 0.5:  # the loop fell behind: catch up
                    second = math.ceil(time.time() + py.lead_s)
        finally:
            for t in list(inflight):
                t.cancel()
            for t in list(inflight):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            py.task = None

    async def _python_second(
        self, run: _Run, pid: int, py: _Python, pyspy_path: str, second: int
    ) -> None:
        assert run.scratch is not None
        got = None
        try:
            got = await record_second(
                pyspy_path=pyspy_path,
                pid=pid,
                comm=py.comm,
                frequency_hz=run.request.frequency_hz,
                output=run.scratch / f"{pid}-{second}.txt",
                until=second + 1.0,
            )
        except _proc.ProcError as e:
            py.state, py.message = "gave up", str(e)
        finally:
            run.python_delay_max_s = max(run.python_delay_max_s, time.time() - (second + 1))
            run.ring.add_python(second, pid, got.stacks if got is not None else None)
            run.ring.commit(time.time())  # that second may be complete now: no waiting
        if got is None:
            return
        if got.started_after_s:
            py.lead_s = min(_MAX_LEAD_S, 0.7 * py.lead_s + 0.3 * got.started_after_s)
        if got.late:
            py.late += 1  # a loaded node: the sampler's stacks stand for that second
            if not procfs.pid_exists(pid):
                py.state = "ended"
            return
        if got.stacks is not None:
            py.seconds += 1
            py.failures = 0
        elif got.exited or not procfs.pid_exists(pid):
            py.state = "ended"
        else:
            py.failures += 1
            py.message = got.message
            # A process just started fails until its interpreter is up ("Failed to find
            # python version"): more patience before its first good second.
            limit = PYSPY_GIVE_UP_AFTER if py.seconds else PYSPY_GIVE_UP_BEFORE_FIRST
            if py.failures >= limit and py.state == "recording":
                py.state = "gave up"
                log.warning(
                    "recorder: py-spy keeps failing",
                    extra={"fields": {"pid": pid, "error": py.message}},
                )
        if got.exited:
            py.state = "ended"


def _slice(ring: Ring, lo: int, hi: int, start: float, end: float) -> Slice:
    """The interval's part of a frozen ring, merged (a worker thread's work)."""
    w = ring.window()
    assert w is not None
    return Slice(
        stacks=merge(ring.buckets_in(lo, hi)),
        start=float(lo),
        end=float(hi),
        asked_start=start,
        asked_end=end,
        window_start=w[0],
        window_end=w[1],
        rss=tuple(rss_trends(ring.rss(lo, hi), ring.meta)),
        pids=ring.pids(lo, hi),
    )


def _memory(ring: Ring, lo: int, hi: int, start: float, end: float) -> RecorderMemory:
    """The processes' RSS over the interval, from a frozen ring (a worker thread's work)."""
    series = ring.rss(lo, hi)
    return RecorderMemory(
        from_=float(lo),
        to=float(hi),
        requested_from=start,
        requested_to=end,
        processes=[
            RssSeries(**RssTrendView.of(t).model_dump(), series=series[t.pid])
            for t in rss_trends(series, ring.meta)
        ],
    )
