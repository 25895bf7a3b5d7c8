"""Continuous profiling: the flight recorder's samples into the profile sink, per interval.

Every ``interval_s`` (15 s by default) the closed interval just past is taken from
the recorder's ring, split per process group, and each group becomes one pprof
(with the interval's real start as its ``time_nanos`` and its length as its
``duration_nanos``) spooled for Pyroscope with ``source=continuous``. An interval
is taken only once its last second has arrived from bpftrace (:data:`LAG_S`
after its end). On stop (DELETE /recorder, SIGTERM) the partial interval since
the last push is pushed too, so a deleted pod's last seconds reach the store: it
waits up to :data:`FINAL_WAIT_S` for bpftrace's output to reach the stop, and says
in the log which seconds it could not wait for.

:func:`recorder_groups` is the one place that knows the recorder's interface: its
:meth:`~agent.profiling.FlightRecorder.samples` already groups an interval per process
group (a container's processes of one runtime), symbolized (whole Python stacks from
py-spy, JIT names from perf maps), and :meth:`~agent.profiling.FlightRecorder.complete_until`
says up to which second the ring is final, so an interval is pushed only once complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from dataclasses import dataclass

from agent import profiling
from agent.sinks._labels import profile_labels
from agent.sinks._sink import Sink
from agent.symbolize.sources import go_sources
from tracecar_formats.pprof import to_pprof

log = logging.getLogger(__name__)

HISTORY = 64
"""Pushed intervals kept for ``GET /recorder`` (``push.recent_intervals``: ``[start, end,
profiles]``; 0 profiles when nothing of the target ran then, or when bpftrace's output
came late in a burst and the recorder filed those seconds together)."""
MIN_WAIT_S = 1.0
LAG_S = 2.0
"""bpftrace prints a second's counts at the next second's tick: wait this long past an
interval's end before taking it."""
FINAL_WAIT_S = 5.0
"""At stop, how long the last push waits for the sampler's output to reach the stop.
On a busy node bpftrace's output trails by seconds: without the wait, a pod deleted
then pushed nothing of its last seconds (seen with the machine's load average at 20).
Part of the shutdown's "a few seconds more" beside the flush budget (docs/stores.md)."""


@dataclass(frozen=True, slots=True)
class ProcessGroup:
    name: str
    """The group's process names (comms), comma-separated: the ``process`` label."""
    container: str | None
    runtime: str | None
    start: float
    duration_s: float
    stacks: dict[str, int]
    pids: tuple[int, ...] = ()


def _pprof(g: ProcessGroup, hz: int) -> bytes:
    """One group's pprof, Go functions with their file and line (from the pclntab of
    the group's processes, while they run)."""
    frames = {f for k in g.stacks for f in k.split(";")}
    return to_pprof(
        g.stacks,
        period_ns=round(1e9 / hz),
        duration_ns=round(g.duration_s * 1e9),
        time_ns=round(g.start * 1e9),
        sources=go_sources(g.pids, frames),
    )


def recorder_groups(recorder: profiling.FlightRecorder, start: int, end: int) -> list[ProcessGroup]:
    """The samples of ``[start, end)`` (Unix seconds), one :class:`ProcessGroup` per
    process group, each with its real start and duration. Called on the event loop: the
    recorder appends to its ring there, and a worker thread iterating it would race."""
    return [
        ProcessGroup(
            name=",".join(sorted(set(g.comms))) or "unknown",
            container=g.group.container,
            runtime=g.group.runtime,
            start=g.start,
            duration_s=g.duration_s,
            stacks=g.stacks,
            pids=g.pids,
        )
        for g in recorder.samples(start=start, end=end)
    ]


class Continuous:
    def __init__(
        self,
        recorder: profiling.FlightRecorder,
        sink: Sink,
        *,
        base_labels: dict[str, str],
        interval_s: float,
    ) -> None:
        self.recorder = recorder
        self.sink = sink
        self.base_labels = base_labels
        self.interval_s = interval_s
        self.pushed_intervals = 0
        self.pushed_profiles = 0
        self.history: deque[tuple[float, float, int]] = deque(maxlen=HISTORY)
        self.last_error: str | None = None
        self.started_at = time.time()
        self._next_start = math.floor(self.started_at)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="continuous-push")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def status(self) -> profiling.ContinuousPushes:
        last = self.history[-1] if self.history else None
        return profiling.ContinuousPushes(
            enabled=self.running,
            interval_s=self.interval_s,
            sink=self.sink.name,
            intervals_pushed=self.pushed_intervals,
            profiles_pushed=self.pushed_profiles,
            last_interval=(
                None if last is None else profiling.PushedInterval(start=last[0], end=last[1])
            ),
            recent_intervals=list(self.history),
            last_error=self.last_error,
        )

    async def stop(self, *, final: bool = True) -> None:
        """End the pushes; ``final``: push what was recorded since the last interval."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if final:
            end = math.floor(time.time())
            start = self._next_start
            if end > start:
                complete = await self._complete_until(end, FINAL_WAIT_S)
                n = await self.push(start, end)
                fields: dict[str, object] = {"start": start, "end": end, "profiles": n}
                if complete is None or complete < end:
                    fields["recorded_until"] = complete
                    log.warning(
                        "continuous push at stop: the sampler's last seconds did not arrive "
                        "in time and are not pushed",
                        extra={"fields": fields},
                    )
                else:
                    log.info("continuous push at stop", extra={"fields": fields})

    async def _complete_until(self, end: int, wait_s: float) -> int | None:
        """The recorder's :meth:`~agent.profiling.FlightRecorder.complete_until`, once it
        reaches ``end`` or after ``wait_s``, or at once when the recorder has stopped."""
        deadline = time.monotonic() + wait_s
        while True:
            complete = self.recorder.complete_until()
            recording = self.recorder.status().state in ("recording", "starting")
            if (complete is not None and complete >= end) or not recording:
                return complete
            if time.monotonic() >= deadline:
                return complete
            await asyncio.sleep(0.1)

    async def _loop(self) -> None:
        while True:
            due = self._next_start + self.interval_s + LAG_S
            # At least a second between attempts: when bpftrace is late (a busy node
            # delays its output by seconds), the interval is not there yet; wait for it.
            await asyncio.sleep(max(due - time.time(), MIN_WAIT_S))
            if self.recorder.status().state not in ("recording", "starting"):
                self.last_error = "the flight recorder stopped: continuous pushes ended"
                return
            # the ring holds whole seconds: an interval is a whole number of them
            await self.push(self._next_start, self._next_start + math.ceil(self.interval_s))

    async def push(self, start: int, end: int) -> int:
        """Spool one pprof per process group of ``[start, end)``; the number spooled.

        Clamped to what the ring holds and has completed; the next interval starts where
        this one ended, so an interval the sampler was late for is covered by the next
        push, not skipped."""
        async with self._lock:
            window = self.recorder.status().window
            complete = self.recorder.complete_until()
            if not window or complete is None:
                return 0  # nothing recorded yet (bpftrace is still attaching): wait
            first = math.floor(window.start)
            if start < first:
                # The ring begins later (the recorder's first second came after this
                # interval was planned, or old seconds were evicted): begin there.
                start, end = first, first + (end - start)
            end = min(end, complete)
            if end <= start:
                return 0  # not complete yet: the sampler is behind; the next attempt takes it
            groups = recorder_groups(self.recorder, start, end)
            self._next_start = end
            hz = self.recorder.frequency_hz
            n = 0
            for g in groups:
                payload = await asyncio.to_thread(_pprof, g, hz)
                labels = profile_labels(
                    self.base_labels,
                    kind="cpu",
                    source="continuous",
                    container=g.container,
                    runtime=g.runtime,
                    extra={"process": g.name},
                )
                meta = {"labels": labels, "from": g.start, "to": g.start + g.duration_s}
                try:
                    await self.sink.put_bytes(payload, meta)
                except Exception as e:  # a full disk must not end continuous profiling
                    self.last_error = f"spooling failed: {e}"
                    log.warning(
                        "continuous push: spooling failed", extra={"fields": {"error": str(e)}}
                    )
                    continue
                n += 1
            self.pushed_intervals += 1
            self.pushed_profiles += n
            self.history.append((float(start), float(end), n))
            return n
