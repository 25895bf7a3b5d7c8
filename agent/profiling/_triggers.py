"""Triggers: "when the CPU use of X stays above N% for S seconds, record a profile",
and the same for memory: "when the RSS of X stays above N MiB" or "grows faster
than N MiB/min".

:class:`Triggers` (constructed and stopped by :mod:`agent.app`, driven by the
``/triggers`` router) owns the triggers of this agent run: each is a task that
samples its target every :data:`SAMPLE_S` seconds (CPU use from
``/proc/PID/stat``, 100 = one core, as ``GET /processes``; resident memory from
``/proc/PID/statm``, summed over the target's processes), and when its one
condition has held for ``for_s`` seconds (``cpu_percent``, ``rss_mib``), or the
RSS grew at ``rss_growth_mib_per_min`` or faster over the last ``for_s``
seconds, starts an ordinary profile
through :class:`agent.profiling.Service` (so it is listed, fetched, diffed and
evicted like any other), then waits out the profile and ``cooldown_s`` before
watching again, until ``max_captures``. Captured profiles older than
``retain_s`` are deleted by the trigger while it lives, after its last capture
too (until ``DELETE`` or the agent's end).

A container's or the pod's processes are re-read at each sample, so processes
that start later count. Triggers live in memory only: they survive clients
going away and end with the agent (:meth:`Triggers.stop` cancels every task;
the profiles they started are stopped by the job store like any other).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field

from agent import procfs
from agent.errors import Invalid, NotFound, TooMany
from agent.jobs import Job, Later, later
from agent.profiling._artifacts import KIND
from agent.profiling._service import Service
from agent.profiling.planner import ProfileOptions, ProfileRequest, Targets, in_range

log = logging.getLogger(__name__)

SAMPLE_S = 0.5
"""How often CPU use is sampled: the resolution of ``for_s``."""
MAX_FOR_S = 3600.0
MAX_COOLDOWN_S = 86400.0
MAX_CAPTURES = 100
MAX_RSS_MIB = float(1 << 30)
"""An RSS bound above any machine (1 PiB in MiB): the range check's upper end."""
MIN_GROWTH_FOR_S = 1.0
"""A growth rate needs a window: at least this (two samples or more)."""
TriggerState = Literal["armed", "recording", "cooling-down", "done", "failed"]
Condition = Literal["cpu", "rss", "rss_growth"]
_MIB = 1 << 20
_WATCHING = ("armed", "recording", "cooling-down")


class TriggerRequest(Targets):
    """The body of ``POST /triggers``. At most one of pid, pids, container; none = the pod.
    Exactly one condition: ``cpu_percent``, ``rss_mib`` or ``rss_growth_mib_per_min``."""

    model_config = ConfigDict(extra="forbid")

    cpu_percent: float | None = Field(
        default=None,
        description="fire at or above this CPU use (100 = one core; up to 100 x the CPUs)",
    )
    rss_mib: float | None = Field(
        default=None,
        description="fire when the target's resident memory (RSS, summed over its "
        "processes) stays at or above this many MiB for for_s",
    )
    rss_growth_mib_per_min: float | None = Field(
        default=None,
        description="fire when the target's RSS grew at least this fast (MiB per minute) "
        f"over the last for_s seconds (for_s >= {MIN_GROWTH_FOR_S:g})",
    )
    for_s: float = Field(default=5.0, description=f"for this long ({SAMPLE_S} .. {MAX_FOR_S} s)")
    profile: ProfileOptions = Field(default_factory=ProfileOptions)
    cooldown_s: float = Field(
        default=60.0, description=f"after a capture, wait this long (0 .. {MAX_COOLDOWN_S} s)"
    )
    max_captures: int = Field(default=3, description=f"then stop (1 .. {MAX_CAPTURES})")
    retain_s: float | None = Field(
        default=None, description="delete captured profiles older than this (none: keep)"
    )

    def condition(self) -> Condition:
        """Which condition is set (the request is checked to have exactly one)."""
        if self.rss_mib is not None:
            return "rss"
        if self.rss_growth_mib_per_min is not None:
            return "rss_growth"
        return "cpu"

    def reason(self) -> str:
        """The condition in words (a pushed capture's ``trigger_reason`` label)."""
        c = self.condition()
        if c == "rss":
            return f"rss >= {self.rss_mib:g}MiB for {self.for_s:g}s"
        if c == "rss_growth":
            return f"rss growth >= {self.rss_growth_mib_per_min:g}MiB/min over {self.for_s:g}s"
        return f"cpu >= {self.cpu_percent:g}% for {self.for_s:g}s"


class _Measured(TypedDict, total=False):
    """What a condition measured when it fired: its own figures only."""

    cpu_percent: float | None
    rss_mib: float | None
    rss_growth_mib_per_min: float | None


class Capture(BaseModel):
    """A profile a trigger started, and what its condition measured when it fired."""

    profile_id: str
    fired_at: float
    cpu_percent: Later[float] = later("cpu: the CPU use it fired at (100 = one core)")
    rss_mib: Later[float] = later("rss, rss_growth: the RSS it fired at (MiB)")
    rss_growth_mib_per_min: Later[float] = later("rss_growth: the growth it fired at")
    expired: Later[bool] = later("older than retain_s: its profile was deleted")


class CaptureView(Capture):
    """A capture as ``GET /triggers/{id}`` shows it: with its profile's link."""

    links: dict[str, str] = Field(description="the profile")


class Skip(BaseModel):
    """A capture the trigger could not take (the profile was refused), and why."""

    at: float
    cpu_percent: Later[float] = later("cpu: the CPU use it fired at (100 = one core)")
    rss_mib: Later[float] = later("rss, rss_growth: the RSS it fired at (MiB)")
    rss_growth_mib_per_min: Later[float] = later("rss_growth: the growth it fired at")
    reason: str


class TriggerView(BaseModel):
    """A trigger as the API shows it (``GET /triggers/{id}``)."""

    id: str
    state: TriggerState
    message: str
    created_at: float
    request: dict[str, Any]
    condition: Condition = Field(description="what it watches: CPU, RSS, or RSS growth")
    reason: str = Field(description="the condition in words (a pushed capture's label)")
    cpu_percent_now: float | None = Field(description="the last CPU use measured")
    rss_mib_now: float | None = Field(
        default=None, description="rss, rss_growth: the last RSS read (MiB)"
    )
    rss_growth_mib_per_min_now: float | None = Field(
        default=None, description="rss_growth: the growth over the last for_s (MiB/min)"
    )
    above_since: float | None
    captures: list[CaptureView] = Field(description="what fired: when, at what CPU, the profile")
    skipped: list[Skip] = Field(description="the last captures not taken, and why")
    links: dict[str, str]


@dataclass
class Trigger:
    id: str
    request: TriggerRequest
    created_at: float = field(default_factory=time.time)
    state: TriggerState = "armed"
    message: str = ""
    cpu_percent: float | None = None
    """The last CPU use measured."""
    rss_bytes: int | None = None
    """The last RSS measured (memory conditions)."""
    rss_growth_mib_per_min: float | None = None
    """The growth over the last for_s (rss_growth; null until the window is full)."""
    above_since: float | None = None
    captures: list[Capture] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def view(self) -> TriggerView:
        return TriggerView(
            id=self.id,
            state=self.state,
            message=self.message,
            created_at=self.created_at,
            request=self.request.model_dump(exclude_none=True),
            condition=self.request.condition(),
            reason=self.request.reason(),
            cpu_percent_now=self.cpu_percent,
            rss_mib_now=None if self.rss_bytes is None else round(self.rss_bytes / _MIB, 1),
            rss_growth_mib_per_min_now=self.rss_growth_mib_per_min,
            above_since=self.above_since,
            captures=[
                CaptureView(
                    **c.model_dump(),
                    links={"profile": f"/profiles/{c.profile_id}"},
                )
                for c in self.captures
            ],
            skipped=self.skipped[-10:],
            links={"self": f"/triggers/{self.id}"},
        )


class Triggers:
    def __init__(self, profiling: Service, *, max_triggers: int) -> None:
        self.profiling = profiling
        self.max_triggers = max_triggers
        self._triggers: dict[str, Trigger] = {}
        self.ncpu = os.cpu_count() or 1
        self.clk_tck = os.sysconf("SC_CLK_TCK")

    # --- API -------------------------------------------------------------
    def list(self) -> list[Trigger]:
        return sorted(self._triggers.values(), key=lambda t: t.created_at)

    def get(self, trigger_id: str) -> Trigger:
        t = self._triggers.get(trigger_id)
        if t is None:
            raise NotFound(f"no trigger with id {trigger_id!r}")
        return t

    async def create(self, req: TriggerRequest) -> Trigger:
        conditions = {
            "cpu_percent": req.cpu_percent,
            "rss_mib": req.rss_mib,
            "rss_growth_mib_per_min": req.rss_growth_mib_per_min,
        }
        given = [k for k, v in conditions.items() if v is not None]
        if len(given) != 1:
            raise Invalid(
                "a trigger has exactly one condition: cpu_percent (CPU use, %), rss_mib "
                "(resident memory, MiB) or rss_growth_mib_per_min (its growth); "
                + (f"got {' and '.join(given)}" if given else "none was given"),
                field=given[1] if len(given) > 1 else "cpu_percent",
                allowed=list(conditions),
            )
        if req.cpu_percent is not None:
            in_range(req.cpu_percent, low=1, high=100.0 * self.ncpu, field="cpu_percent", unit="%")
        if req.rss_mib is not None:
            in_range(req.rss_mib, low=1, high=MAX_RSS_MIB, field="rss_mib", unit="MiB")
        if req.rss_growth_mib_per_min is not None:
            in_range(
                req.rss_growth_mib_per_min,
                low=0.01,
                high=MAX_RSS_MIB,
                field="rss_growth_mib_per_min",
                unit="MiB/min",
            )
            in_range(req.for_s, low=MIN_GROWTH_FOR_S, high=MAX_FOR_S, field="for_s", unit="s")
        in_range(req.for_s, low=SAMPLE_S, high=MAX_FOR_S, field="for_s", unit="s")
        in_range(req.cooldown_s, low=0, high=MAX_COOLDOWN_S, field="cooldown_s", unit="s")
        in_range(req.max_captures, low=1, high=MAX_CAPTURES, field="max_captures", unit="")
        if req.retain_s is not None:
            in_range(req.retain_s, low=1, high=30 * 86400, field="retain_s", unit="s")
        active = [t for t in self._triggers.values() if t.state not in ("done", "failed")]
        if len(active) >= self.max_triggers:
            raise TooMany(
                f"{self.max_triggers} triggers are active (the configured limit); "
                "delete one with DELETE /triggers/{id}"
            )
        # Validate the profile as POST /profiles would (targets exist, bounds), now.
        await self.profiling.plan(self._profile_request(req), output=self.profiling.jobs.data_dir)
        await asyncio.to_thread(self._pids, req)
        trigger = Trigger(id=secrets.token_hex(6), request=req)
        self._triggers[trigger.id] = trigger
        trigger.task = asyncio.create_task(self._watch(trigger), name=f"trigger-{trigger.id}")
        return trigger

    async def delete(self, trigger_id: str) -> None:
        trigger = self.get(trigger_id)
        await self._cancel(trigger)
        self._triggers.pop(trigger_id, None)

    async def start(self) -> None:
        """Triggers are made by requests: none to start."""

    def busy(self) -> bool:
        """A watching trigger does not keep an idle agent alive: the profiles it starts do."""
        return False

    async def capabilities(self) -> dict[str, object]:
        """A trigger's captures are CPU profiles: it works where they do."""
        profiles = await self.profiling.capabilities()
        return {
            "available": profiles.get("available", False),
            "reason": f"captures CPU profiles: {profiles.get('reason', '')}",
            "max_triggers": self.max_triggers,
            "watching": sum(1 for t in self._triggers.values() if t.state in _WATCHING),
        }

    async def stop(self) -> None:
        """Agent shutdown: end every trigger's task (their profiles are the job store's)."""
        for t in list(self._triggers.values()):
            await self._cancel(t)
        self._triggers.clear()

    # --- the watch ---------------------------------------------------------
    @staticmethod
    def _profile_request(req: TriggerRequest) -> ProfileRequest:
        return ProfileRequest(
            pid=req.pid,
            pids=req.pids,
            container=req.container,
            **req.profile.model_dump(exclude_none=True),
        )

    @staticmethod
    def _pids(req: TriggerRequest) -> set[int]:
        if req.pid is not None:
            return {procfs.require_pid(req.pid)} if procfs.pid_exists(req.pid) else set()
        if req.pids is not None:
            return {p for p in req.pids if procfs.pid_exists(p)}
        own = procfs.own_tree()
        procs = procfs.list_processes()
        return {
            p.pid
            for p in procs
            if p.pid not in own
            and p.state != "Z"
            and (req.container is None or p.container == req.container)
        }

    async def _cancel(self, trigger: Trigger) -> None:
        if trigger.task is not None and not trigger.task.done():
            trigger.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await trigger.task
        if trigger.state not in ("done", "failed"):
            trigger.state = "done"
            trigger.message = trigger.message or "stopped"

    async def _watch(self, trigger: Trigger) -> None:
        try:
            await self._loop(trigger)
            await self._retain(trigger)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a trigger never dies silently
            log.exception("trigger failed", extra={"fields": {"trigger": trigger.id}})
            trigger.state = "failed"
            trigger.message = str(e) or type(e).__name__

    async def _loop(self, trigger: Trigger) -> None:
        reader = procfs.RssReader()  # the target's statm files, kept open while it runs
        try:
            await self._sample(trigger, trigger.request.condition(), reader, deque())
        finally:
            reader.close()

    async def _sample(
        self,
        trigger: Trigger,
        condition: Condition,
        reader: procfs.RssReader,
        window: deque[tuple[float, int]],
    ) -> None:
        """Sample until ``max_captures``; ``window``: (monotonic, RSS) over the last for_s."""
        req = trigger.request
        before: dict[int, int] | None = None
        t_before = 0.0
        while len(trigger.captures) < req.max_captures:
            await self._expire(trigger)
            pids = await asyncio.to_thread(self._pids, req)
            if not pids and req.pid is not None:
                trigger.state, trigger.message = "done", f"pid {req.pid} exited"
                return
            now = time.monotonic()
            if condition == "cpu":
                ticks = await asyncio.to_thread(procfs.cpu_ticks)
                if before is not None:
                    used = sum(ticks.get(p, 0) - before.get(p, ticks.get(p, 0)) for p in pids)
                    pct = 100.0 * used / self.clk_tck / max(now - t_before, 1e-3)
                    trigger.cpu_percent = round(pct, 1)
                    if self._held(trigger, pct >= (req.cpu_percent or 0.0), now - t_before):
                        await self._fire(trigger)
                        before = None
                        continue
                before, t_before = ticks, now
            else:
                rss = await asyncio.to_thread(_rss, reader, pids)
                trigger.rss_bytes = rss
                if condition == "rss":
                    if self._held(trigger, rss >= (req.rss_mib or 0.0) * _MIB, SAMPLE_S):
                        await self._fire(trigger)
                        continue
                else:
                    window.append((now, rss))
                    while len(window) > 2 and now - window[1][0] >= req.for_s - 1e-6:
                        window.popleft()  # keep one sample at or beyond the window's start
                    span = now - window[0][0]
                    if span >= req.for_s - 1e-6:
                        rate = (rss - window[0][1]) / _MIB / span * 60.0
                        trigger.rss_growth_mib_per_min = round(rate, 2)
                        if rate >= (req.rss_growth_mib_per_min or 0.0):
                            trigger.above_since = time.time() - span
                            await self._fire(trigger)
                            window.clear()  # after the capture and cooldown: a new window
                            continue
            await asyncio.sleep(SAMPLE_S)
        trigger.state = "done"
        trigger.message = f"{req.max_captures} capture(s) made: the limit"

    @staticmethod
    def _held(trigger: Trigger, above: bool, step_s: float) -> bool:
        """Whether the condition has now held for ``for_s`` (``above_since`` tracks it)."""
        if not above:
            trigger.above_since = None
            return False
        trigger.above_since = trigger.above_since or time.time() - step_s
        return time.time() - trigger.above_since >= trigger.request.for_s - 1e-6

    async def _fire(self, trigger: Trigger) -> None:
        req = trigger.request
        fired_at = time.time()
        measured = self._measured(trigger)
        trigger.above_since = None
        try:
            job = await self.profiling.create(self._profile_request(req))
        except Exception as e:  # a refused profile (limit, target gone) is noted, not fatal
            trigger.skipped.append(Skip(at=fired_at, **measured, reason=str(e)))
            trigger.state = "cooling-down"
            await asyncio.sleep(req.cooldown_s)
            trigger.state = "armed"
            return
        assert isinstance(job, Job)
        trigger.captures.append(Capture(profile_id=job.id, fired_at=fired_at, **measured))
        trigger.state = "recording"
        await self.profiling.wait(job)
        if len(trigger.captures) < req.max_captures:
            trigger.state = "cooling-down"
            await asyncio.sleep(req.cooldown_s)
            trigger.state = "armed"

    @staticmethod
    def _measured(trigger: Trigger) -> _Measured:
        """What the condition measured when it fired (a capture's record)."""
        c = trigger.request.condition()
        if c == "cpu":
            return {"cpu_percent": trigger.cpu_percent}
        rss = None if trigger.rss_bytes is None else round(trigger.rss_bytes / _MIB, 1)
        if c == "rss":
            return {"rss_mib": rss}
        return {"rss_mib": rss, "rss_growth_mib_per_min": trigger.rss_growth_mib_per_min}

    async def _retain(self, trigger: Trigger) -> None:
        """After the last capture, go on deleting captures as they pass ``retain_s``:
        a trigger that hit its limit must not keep its profiles for ever."""
        retain = trigger.request.retain_s
        if retain is None:
            return
        while True:
            await self._expire(trigger)
            due = [c.fired_at + retain for c in trigger.captures if not c.expired]
            if not due:
                return
            # Sleep until the next one is due (a recording one is retried shortly).
            await asyncio.sleep(min(max(min(due) - time.time(), SAMPLE_S), 60.0))

    async def _expire(self, trigger: Trigger) -> None:
        retain = trigger.request.retain_s
        if retain is None:
            return
        cutoff = time.time() - retain
        for c in trigger.captures:
            if c.fired_at < cutoff and not c.expired:
                try:
                    job = self.profiling.jobs.get(KIND, c.profile_id)
                except NotFound:  # deleted or evicted already
                    c.expired = True
                    continue
                if job.finished:
                    await self.profiling.jobs.delete(job)
                    c.expired = True


def _rss(reader: procfs.RssReader, pids: set[int]) -> int:
    """The resident bytes of ``pids``, summed (pages shared between them count once per
    process, as each one's RSS does: a memory limit's view is the cgroup's)."""
    total = sum(reader.read(p) or 0 for p in pids)
    reader.keep_only(pids)
    return total
