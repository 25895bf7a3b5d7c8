"""One probe's record: what was asked, what runs, what it saw so far (and how it ends).

:class:`Probe` is what ``GET /probes/{id}`` shows (:meth:`Probe.view`);
:class:`Backends` is what the service found out about bpftrace and perf probe
on this node at start-up.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from agent.probes import _bpftrace, _perfprobe
from agent.probes._model import (
    BackendName,
    Bucket,
    ProbePlan,
    ProbeRequest,
    ProbeState,
    ProbeSummary,
    ProbeTarget,
    ProbeView,
)
from agent.probes._plan import Spec
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
    request: ProbeRequest
    spec: Spec | None
    backend: BackendName
    backend_reason: str
    plan: ProbePlan
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

    def view(self) -> ProbeView:
        """The probe as the API shows it. The answers of POST and DELETE send the fields
        set here (``model_dump(exclude_unset=True)``): a plain uprobe's target names no
        USDT fields, and only DELETE of a finished probe says ``deleted``."""
        spec = self.spec
        summary = ProbeSummary(hits=self.hits)
        if spec is not None:
            summary["per_pid"] = {str(spec.pid): self.hits}
        if self.histogram is not None:
            summary["histogram"] = self.histogram
            summary["unit"] = "ns" if spec is not None and spec.of == "latency" else None
        view = ProbeView(
            id=self.id,
            state=self.state,
            reason=self.reason,
            error=self.error,
            backend=self.backend,
            backend_reason=self.backend_reason,
            target=None if spec is None else target_of(spec, address=True),
            request=self.request,
            duration_s=self.duration_s,
            max_events=self.max_events,
            created_at=self.created_at,
            started_at=self.started_at,
            ends_at=None if self.started_at is None else self.started_at + self.duration_s,
            finished_at=self.finished_at,
            hits=self.hits,
            events=self.stream.published,
            drops=self._drops(),
            dropped_by_rate_limit=self.stream.drops,
            lost_by_tracer=self.lost,
            readers=self.stream.readers,
            summary=summary,
            plan=self.plan,
            links={"self": f"/probes/{self.id}", "events": f"/probes/{self.id}/events"},
        )
        note = self.session.note() if isinstance(self.session, _perfprobe.Session) else None
        if note:
            view.notes = [note]  # set only when there is one: answers leave unset fields out
        return view

    def answer(self) -> dict[str, Any]:
        """:meth:`view` as POST's answer and an error's ``probe`` field send it."""
        return self.view().model_dump(mode="json", exclude_unset=True)


def target_of(spec: Spec, *, address: bool) -> ProbeTarget:
    """What ``spec`` attaches to, with only the fields its kind has set: a plain uprobe
    names no USDT fields (answers dumped with ``exclude_unset`` leave them out), and a
    dry run's target no address."""
    target = ProbeTarget(pid=spec.pid, binary=spec.binary, function=spec.function)
    if address:
        target.address = None if spec.address is None else f"0x{spec.address:x}"
    if spec.usdt is not None:
        target.usdt, target.usdt_return = spec.usdt, spec.usdt_return
        target.python_function = spec.python_function
        target.python_file = spec.python_file
    return target
