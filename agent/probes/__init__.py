"""Dynamic tracing with uprobes (bpftrace, or perf probe where bpftrace cannot run) and with
USDT probes, Python functions among them (bpftrace).

Public surface: :class:`Service` (constructed by :mod:`agent.app` with the
settings and the shared :class:`agent.jobs.JobStore`; started and stopped by
the app's lifespan), the request model :class:`ProbeRequest`, the answers'
models (:class:`ProbeView`, :class:`ProbeList`, :class:`ProbeDryRun`), the symbol
listing's shape :class:`SymbolList`, and ``STREAM_MAX_BYTES`` (the per-stream
byte bound the router offers).

Inside, one module per step::

    _model       the request and the wire shapes (pydantic, TypedDicts)
    _plan        the resolved Spec and the items a tracer's output parses into
    _bpftrace    the bpftrace backend: program, argv, output parser, Session
    _perfprobe   the perf probe backend: plan, tracefs, Session, sweep
    _stream      the bounded, rate-limited event buffer readers follow
    _probe       one probe's record (Probe) and the backends found (Backends)
    _usdt        USDT probes: the one a request names, in the object carrying it
    _render      the event stream as NDJSON or SSE
    _service     Service: the registry, backend choice, run task and watchdog

A probe goes: request (validated, :mod:`._model`) -> resolved :class:`._plan.Spec`
(target pid, the binary through ``/proc/PID/root``, the symbol or USDT note checked
in its ELF, :mod:`agent.symbols`) -> a plan (a bpftrace program, or ``perf probe``
command lines; a dry run stops here) -> a running tracer whose output is parsed
into hits, counts and histogram buckets -> a bounded event stream
(:mod:`._stream`). A probe ends by its duration, its event cap, ``DELETE``,
its target exiting, or the agent stopping; whatever ends it, the tracer is
reaped and perf-probe events are deleted from tracefs. Ended probes stay
readable (state, hits, summary, the retained events) until deleted or evicted.

Streaming clients do not own a probe: one going away only drops its cursor;
the probe runs on until its own end.
"""

from agent.errors import Forbidden
from agent.probes._model import ProbeDryRun, ProbeList, ProbeRequest, ProbeView, SymbolList
from agent.probes._service import BUFFER_EVENTS, STREAM_MAX_BYTES, Service

__all__ = [
    "BUFFER_EVENTS",
    "STREAM_MAX_BYTES",
    "Forbidden",
    "ProbeDryRun",
    "ProbeList",
    "ProbeRequest",
    "ProbeView",
    "Service",
    "SymbolList",
]
