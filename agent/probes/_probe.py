"""One probe's record: what was asked, what runs, what it saw so far (and how it ends).

:class:`Probe` is what ``GET /probes/{id}`` shows (:meth:`Probe.to_dict`);
:class:`Backends` is what the service found out about bpftrace and perf probe
on this node at start-up.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from agent.probes import _bpftrace, _perfprobe
from agent.probes._model import BackendName, ProbeState
from agent.probes._plan import Bucket, Spec
from agent.probes._stream import EventStream


@dataclass
class Backends:
    bpftrace_version: str | None = None
    bpftrace_ok: bool = False
    bpftrace_reason: str = "not checked yet"
    perf_version: str | None = None
    perf_ok: bool = False
    perf_reason: str = "not checked yet"


@dataclass
class Probe:
    id: str
    request: dict[str, Any]
    spec: Spec | None
    backend: BackendName
    backend_reason: str
    plan: dict[str, Any]
    stream: EventStream
    duration_s: float
    max_events: int
    state: ProbeState = "starting"
    reason: str | None = None
    error: str | None = None
    hits: int = 0
    counted: int = 0  # the tracer's own count, exact even when events are lost
    lost: int = 0
    histogram: list[Bucket] | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    session: _bpftrace.Session | _perfprobe.Session | None = field(default=None, repr=False)
    stop_reason: str | None = None

    @property
    def running(self) -> bool:
        return self.state in ("starting", "running")

    def _drops(self) -> int:
        """Rate-limited plus lost events; in events mode also hits the tracer counted
        but never printed (bpftrace discards what is in flight when it exits)."""
        drops = self.stream.drops + self.lost
        if self.spec is not None and self.spec.mode == "events" and self.reason != "max_events":
            drops = max(drops, self.hits - self.stream.published)
        return drops

    def to_dict(self) -> dict[str, Any]:
        spec = self.spec
        summary: dict[str, Any] = {"hits": self.hits}
        if spec is not None:
            summary["per_pid"] = {str(spec.pid): self.hits}
        if self.histogram is not None:
            summary["histogram"] = self.histogram
            summary["unit"] = "ns" if spec is not None and spec.of == "latency" else None
        return {
            "id": self.id,
            "state": self.state,
            "reason": self.reason,
            "error": self.error,
            "backend": self.backend,
            "backend_reason": self.backend_reason,
            "target": None
            if spec is None
            else {
                "pid": spec.pid,
                "binary": spec.binary,
                "function": spec.function,
                "address": None if spec.address is None else f"0x{spec.address:x}",
                **(
                    {}
                    if spec.usdt is None
                    else {
                        "usdt": spec.usdt,
                        "usdt_return": spec.usdt_return,
                        "python_function": spec.python_function,
                        "python_file": spec.python_file,
                    }
                ),
            },
            "request": self.request,
            "duration_s": self.duration_s,
            "max_events": self.max_events,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ends_at": None if self.started_at is None else self.started_at + self.duration_s,
            "finished_at": self.finished_at,
            "hits": self.hits,
            "events": self.stream.published,
            "drops": self._drops(),
            "dropped_by_rate_limit": self.stream.drops,
            "lost_by_tracer": self.lost,
            "readers": self.stream.readers,
            "summary": summary,
            "plan": self.plan,
            "links": {"self": f"/probes/{self.id}", "events": f"/probes/{self.id}/events"},
        }
