"""Continuous profiling: the flight recorder's samples into the profile sink, per interval.

Every ``interval_s`` (15 s by default) the closed interval just past is taken from
the recorder's ring, split per process group, and each group becomes one pprof
(with the interval's real start as its ``time_nanos`` and its length as its
``duration_nanos``) spooled for Pyroscope with ``source=continuous``. An interval
is taken only once its last second has arrived from bpftrace (:data:`LAG_S`
after its end). On stop (DELETE /recorder, SIGTERM) the partial interval since
the last push is pushed too, so a deleted pod's last seconds reach the store.

:func:`recorder_groups` is the one place that knows the recorder's interface:
today the recorder folds stacks as ``comm;frame;...`` for the whole target, so
a group is a process name (the stacks' root frame), with its container and
runtime looked up among the pod's live processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from agent import procfs, profiling
from agent.errors import AgentError
from agent.profiling.pprof import to_pprof
from agent.sinks._labels import profile_labels
from agent.sinks._sink import Sink

log = logging.getLogger(__name__)

HISTORY = 64
"""Pushed intervals kept for ``GET /recorder`` (``push.recent_intervals``: ``[start, end,
profiles]``; 0 profiles when nothing of the target ran then, or when bpftrace's output
came late in a burst and the recorder filed those seconds together)."""
MIN_WAIT_S = 1.0
LAG_S = 2.0
"""bpftrace prints a second's counts at the next second's tick: wait this long past an
interval's end before taking it."""


@dataclass(frozen=True, slots=True)
class ProcessGroup:
    name: str
    container: str | None
    runtime: str | None
    stacks: dict[str, int]


def _process_facts() -> dict[str, tuple[str, str]]:
    """comm -> (container, runtime) of the pod's live processes (the first one wins)."""
    facts: dict[str, tuple[str, str]] = {}
    for p in procfs.list_processes():
        facts.setdefault(p.comm.replace(" ", "_"), (p.container, p.runtime))
    return facts


async def recorder_groups(
    recorder: profiling.FlightRecorder, start: float, end: float
) -> tuple[list[ProcessGroup], float, float]:
    """The samples of ``[start, end)`` grouped per process group, with the bounds used.

    The adapter over the recorder's current interface (``interval``: folded stacks whose
    root frame is the process name). The ring is read on the event loop (the recorder
    appends to it there: a worker thread iterating it would race the appends); the
    grouping and the /proc reads run in a thread."""
    stacks, lo, hi = recorder.interval(start, end)
    return await asyncio.to_thread(_group, stacks), lo, hi


def _group(stacks: dict[str, int]) -> list[ProcessGroup]:
    by_name: dict[str, dict[str, int]] = {}
    for stack, n in stacks.items():
        name = stack.partition(";")[0]
        by_name.setdefault(name, {})[stack] = n
    facts = _process_facts() if by_name else {}
    return [
        ProcessGroup(
            name=name,
            container=facts.get(name, (None, None))[0],
            runtime=facts.get(name, (None, None))[1],
            stacks=group,
        )
        for name, group in sorted(by_name.items())
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
        self._next_start = float(math.floor(self.started_at))
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="continuous-push")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.running,
            "interval_s": self.interval_s,
            "sink": self.sink.name,
            "intervals_pushed": self.pushed_intervals,
            "profiles_pushed": self.pushed_profiles,
            "last_interval": (
                {"start": self.history[-1][0], "end": self.history[-1][1]} if self.history else None
            ),
            "recent_intervals": [list(iv) for iv in self.history],
            "last_error": self.last_error,
        }

    async def stop(self, *, final: bool = True) -> None:
        """End the pushes; ``final``: push what was recorded since the last interval."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if final:
            end = float(math.floor(time.time()))
            if end > self._next_start:
                await self.push(self._next_start, end)

    async def _loop(self) -> None:
        while True:
            due = self._next_start + self.interval_s + LAG_S
            # At least a second between attempts: when bpftrace is late (a busy node
            # delays its output by seconds), the interval is not there yet; wait for it.
            await asyncio.sleep(max(due - time.time(), MIN_WAIT_S))
            if self.recorder.status()["state"] not in ("recording", "starting"):
                self.last_error = "the flight recorder stopped: continuous pushes ended"
                return
            await self.push(self._next_start, self._next_start + self.interval_s)

    async def push(self, start: float, end: float) -> int:
        """Spool one pprof per process group of ``[start, end)``; the number spooled.

        Clamped to what the ring holds; the next interval starts where this one ended,
        so an interval bpftrace was late for is covered by the next push, not skipped."""
        async with self._lock:
            window = self.recorder.status().get("window")
            if not window:
                return 0  # nothing recorded yet (bpftrace is still attaching): wait
            first, last = float(window["start"]), float(window["end"])
            if start < first:
                # The ring begins later (the recorder's first second came after this
                # interval was planned, or old seconds were evicted): begin there.
                start, end = first, first + (end - start)
            end = min(end, last)
            if end <= start:
                return 0  # not recorded yet: bpftrace is behind; the next attempt takes it
            try:
                groups, lo, hi = await recorder_groups(self.recorder, start, end)
            except AgentError as e:
                self.last_error = f"[{start:g}, {end:g}): {e.detail}"
                self._next_start = end
                return 0
            self._next_start = hi
            hz = self.recorder.frequency_hz
            n = 0
            for g in groups:
                payload = await asyncio.to_thread(
                    to_pprof,
                    g.stacks,
                    period_ns=round(1e9 / hz),
                    duration_ns=round((hi - lo) * 1e9),
                    time_ns=round(lo * 1e9),
                )
                labels = profile_labels(
                    self.base_labels,
                    kind="cpu",
                    source="continuous",
                    container=g.container,
                    runtime=g.runtime,
                    extra={"process": g.name},
                )
                try:
                    await self.sink.put_bytes(payload, {"labels": labels, "from": lo, "to": hi})
                except Exception as e:  # a full disk must not end continuous profiling
                    self.last_error = f"spooling failed: {e}"
                    log.warning("continuous push: spooling failed: %s", e)
                    continue
                n += 1
            self.pushed_intervals += 1
            self.pushed_profiles += n
            self.history.append((lo, hi, n))
            return n
