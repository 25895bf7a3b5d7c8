"""Prometheus metrics of the agent: work started, failed and running; storage; drops; tools.

One registry per app (not the global one), so several apps in one process (tests)
never collide; ``GET /metrics`` (:mod:`agent.routers.metrics`) serves it. The
services count what happens to their work; values that are a state rather than
an event (running work, bytes on disk) are read from the services at scrape time
(``set_function``), so they can never drift from what ``GET /profiles`` shows.

Names (``_total`` is added to counters by the client library)::

    tracecar_agent_{profiles,probes,lttng_sessions}_started_total
    tracecar_agent_{profiles,probes,lttng_sessions}_failed_total
    tracecar_agent_{profiles,probes,lttng_sessions}_running
    tracecar_agent_stored_bytes{capability}          artifacts on disk now
    tracecar_agent_storage_limit_bytes               the eviction threshold
    tracecar_agent_events_dropped_total{source}      events lost on the way
    tracecar_agent_tool_duration_seconds{tool}       child-process run times
    tracecar_agent_sink_dropped_total{sink,reason}   spooled items lost (spool_full,
                                                     too_old, rejected, too_large)
    tracecar_agent_sink_sent_total{sink}             items a store took
    tracecar_agent_sink_sent_bytes_total{sink}       their bytes
    tracecar_agent_sink_queued_bytes{sink}           bytes waiting in the spool now
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Child processes run from milliseconds (perf --version) to an hour (a long probe).
_TOOL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

DropSource = Literal["probe_rate_limit", "probe_tracer_lost", "lttng_discarded", "perf_lost"]
DROP_SOURCES: tuple[DropSource, ...] = (
    "probe_rate_limit",  # over TRACECAR_AGENT_PROBE_MAX_EVENT_RATE: not kept, counted
    "probe_tracer_lost",  # the tracer's own ring buffer overflowed (bpftrace/perf "lost")
    "lttng_discarded",  # LTTng discarded events (its sub-buffers were full)
    "perf_lost",  # perf record's lost samples (LOST records it reported)
)


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """The three series of one kind of work (profiles, probes, LTTng sessions)."""

    started: Counter
    failed: Counter
    running: Gauge


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.profiles = self._lifecycle("profiles", "CPU profiles (perf record)")
        self.probes = self._lifecycle("probes", "uprobes (bpftrace or perf probe)")
        self.lttng_sessions = self._lifecycle("lttng_sessions", "LTTng tracing sessions")
        self.stored_bytes = Gauge(
            "tracecar_agent_stored_bytes",
            "Bytes of artifacts on disk now, by capability (profiles: every job's files; "
            "lttng: every session's trace)",
            ["capability"],
            registry=self.registry,
        )
        self.storage_limit = Gauge(
            "tracecar_agent_storage_limit_bytes",
            "Profile artifacts beyond this are evicted, oldest finished first",
            registry=self.registry,
        )
        self.dropped = Counter(
            "tracecar_agent_events_dropped",
            "Events lost on their way to the client, by source",
            ["source"],
            registry=self.registry,
        )
        # Resolved once: labels() takes a lock and validates on every call, and the
        # probes count drops on their hot path.
        self._drops = {s: self.dropped.labels(s) for s in DROP_SOURCES}
        self.tool_duration = Histogram(
            "tracecar_agent_tool_duration_seconds",
            "Run time of the tools' child processes (perf, bpftrace, lttng, babeltrace2, ...), "
            "from start to reaped",
            ["tool"],
            buckets=_TOOL_BUCKETS,
            registry=self.registry,
        )

        self.sink_dropped = Counter(
            "tracecar_agent_sink_dropped",
            "Items spooled for a store and lost, by sink and reason (spool_full: the oldest "
            "went to make room; too_old: past TRACECAR_AGENT_SPOOL_MAX_AGE_S; rejected: the "
            "store refused it; too_large: larger than the whole spool)",
            ["sink", "reason"],
            registry=self.registry,
        )
        self.sink_sent = Counter(
            "tracecar_agent_sink_sent",
            "Items a store took, by sink",
            ["sink"],
            registry=self.registry,
        )
        self.sink_sent_bytes = Counter(
            "tracecar_agent_sink_sent_bytes",
            "Bytes of the items a store took, by sink",
            ["sink"],
            registry=self.registry,
        )
        self.sink_queued_bytes = Gauge(
            "tracecar_agent_sink_queued_bytes",
            "Bytes waiting in a sink's spool now",
            ["sink"],
            registry=self.registry,
        )

    def _lifecycle(self, name: str, what: str) -> Lifecycle:
        return Lifecycle(
            started=Counter(
                f"tracecar_agent_{name}_started",
                f"{what} started (accepted and set going)",
                registry=self.registry,
            ),
            failed=Counter(
                f"tracecar_agent_{name}_failed",
                f"{what} that started and then failed",
                registry=self.registry,
            ),
            running=Gauge(
                f"tracecar_agent_{name}_running",
                f"{what} running now",
                registry=self.registry,
            ),
        )

    def drop(self, source: DropSource, n: int = 1) -> None:
        if n > 0:
            self._drops[source].inc(n)

    def observe_tool(self, argv: Sequence[str], seconds: float) -> None:
        """An observer for :func:`agent._proc.add_observer`: one child's run time."""
        tool = os.path.basename(argv[0]) if argv else "?"
        self.tool_duration.labels(tool).observe(seconds)

    def measure_storage(self, capability: str, fn: Callable[[], float]) -> None:
        self.stored_bytes.labels(capability).set_function(fn)
