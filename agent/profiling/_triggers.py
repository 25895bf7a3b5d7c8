"""Triggers: "when the CPU use of X stays above N% for S seconds, record a profile".

:class:`Triggers` (constructed and stopped by :mod:`agent.app`, driven by the
``/triggers`` router) owns the triggers of this agent run: each is a task that
samples the CPU use of its target every :data:`SAMPLE_S` seconds from
``/proc/PID/stat`` (100 = one core, as ``GET /processes``), and when it has been
at or above ``cpu_percent`` for ``for_s`` seconds starts an ordinary profile
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
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent import procfs
from agent.errors import NotFound, TooMany
from agent.jobs import Job
from agent.profiling._artifacts import KIND
from agent.profiling._service import Service
from agent.profiling.planner import ProfileOptions, ProfileRequest, Targets, in_range

log = logging.getLogger(__name__)

SAMPLE_S = 0.5
"""How often CPU use is sampled: the resolution of ``for_s``."""
MAX_FOR_S = 3600.0
MAX_COOLDOWN_S = 86400.0
MAX_CAPTURES = 100
TriggerState = Literal["armed", "recording", "cooling-down", "done", "failed"]
_WATCHING = ("armed", "recording", "cooling-down")


class TriggerRequest(Targets):
    """The body of ``POST /triggers``. At most one of pid, pids, container; none = the pod."""

    model_config = ConfigDict(extra="forbid")

    cpu_percent: float = Field(
        description="fire at or above this CPU use (100 = one core; up to 100 x the CPUs)"
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


class TriggerView(BaseModel):
    """A trigger as the API shows it (``GET /triggers/{id}``)."""

    id: str
    state: TriggerState
    message: str
    created_at: float
    request: dict[str, Any]
    cpu_percent_now: float | None = Field(description="the last CPU use measured")
    above_since: float | None
    captures: list[dict[str, Any]] = Field(description="what fired: when, at what CPU, the profile")
    skipped: list[dict[str, Any]] = Field(description="the last captures not taken, and why")
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
    above_since: float | None = None
    captures: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "message": self.message,
            "created_at": self.created_at,
            "request": self.request.model_dump(exclude_none=True),
            "cpu_percent_now": self.cpu_percent,
            "above_since": self.above_since,
            "captures": [
                {**c, "links": {"profile": f"/profiles/{c['profile_id']}"}} for c in self.captures
            ],
            "skipped": self.skipped[-10:],
            "links": {"self": f"/triggers/{self.id}"},
        }


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
        in_range(req.cpu_percent, low=1, high=100.0 * self.ncpu, field="cpu_percent", unit="%")
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
        req = trigger.request
        before: dict[int, int] | None = None
        t_before = 0.0
        while len(trigger.captures) < req.max_captures:
            await self._expire(trigger)
            pids = await asyncio.to_thread(self._pids, req)
            if not pids and req.pid is not None:
                trigger.state, trigger.message = "done", f"pid {req.pid} exited"
                return
            ticks = await asyncio.to_thread(procfs.cpu_ticks)
            now = time.monotonic()
            if before is not None:
                used = sum(ticks.get(p, 0) - before.get(p, ticks.get(p, 0)) for p in pids)
                pct = 100.0 * used / self.clk_tck / max(now - t_before, 1e-3)
                trigger.cpu_percent = round(pct, 1)
                if pct >= req.cpu_percent:
                    trigger.above_since = trigger.above_since or time.time() - (now - t_before)
                    if time.time() - trigger.above_since >= req.for_s - 1e-6:
                        await self._fire(trigger)
                        before = None
                        continue
                else:
                    trigger.above_since = None
            before, t_before = ticks, now
            await asyncio.sleep(SAMPLE_S)
        trigger.state = "done"
        trigger.message = f"{req.max_captures} capture(s) made: the limit"

    async def _fire(self, trigger: Trigger) -> None:
        req = trigger.request
        fired_at = time.time()
        measured = trigger.cpu_percent
        trigger.above_since = None
        try:
            job = await self.profiling.create(self._profile_request(req))
        except Exception as e:  # a refused profile (limit, target gone) is noted, not fatal
            trigger.skipped.append({"at": fired_at, "cpu_percent": measured, "reason": str(e)})
            trigger.state = "cooling-down"
            await asyncio.sleep(req.cooldown_s)
            trigger.state = "armed"
            return
        assert isinstance(job, Job)
        trigger.captures.append(
            {"profile_id": job.id, "fired_at": fired_at, "cpu_percent": measured}
        )
        trigger.state = "recording"
        await self.profiling.wait(job)
        if len(trigger.captures) < req.max_captures:
            trigger.state = "cooling-down"
            await asyncio.sleep(req.cooldown_s)
            trigger.state = "armed"

    async def _retain(self, trigger: Trigger) -> None:
        """After the last capture, go on deleting captures as they pass ``retain_s``:
        a trigger that hit its limit must not keep its profiles for ever."""
        retain = trigger.request.retain_s
        if retain is None:
            return
        while True:
            await self._expire(trigger)
            due = [c["fired_at"] + retain for c in trigger.captures if not c.get("expired")]
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
            if c["fired_at"] < cutoff and not c.get("expired"):
                try:
                    job = self.profiling.jobs.get(KIND, c["profile_id"])
                except NotFound:  # deleted or evicted already
                    c["expired"] = True
                    continue
                if job.finished:
                    await self.profiling.jobs.delete(job)
                    c["expired"] = True
