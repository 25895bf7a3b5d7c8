"""CPU profiles with perf, off-CPU profiles with perf (DWARF) or bpftrace (frame
pointers), and differential flame graphs.

Both types of profile (``type``: ``cpu``, ``off-cpu``) give the same outputs:
folded stacks, SVG, speedscope, pprof, and the tools' raw records (``perf.data``;
for off-CPU targets walked by frame pointers, bpftrace's JSON output ``bpftrace.json``).

Public surface: :class:`Service` (constructed by :mod:`agent.app` with the
settings and the shared :class:`agent.jobs.JobStore`; started and stopped by
the app's lifespan) and the artifacts' file names (``KIND``, ``ARTIFACTS``,
``PERF_DATA``, ``SVG``, ...). The output formats (collapse, flame graph, speedscope,
pprof, diff, py-spy's fold) live in the pure top-level package :mod:`tracecar_formats`,
shared with the plugin. The service's own pieces::

    planner      the request, the limits, plan() (pure; what dry_run shows)
    recorder     perf record: run, stop early, parse its stderr
    offcpu       off-CPU: the bpftrace program and the perf command, their outputs ->
                 folded stacks weighted by time off CPU (pure)
    _offcpu      off-CPU: the bpftrace run, perf script's time weighting, whether perf
                 can record tracepoints here, the targets' switch rates
    postprocess  perf script streamed into the collapser
    _targets     the facts about target processes the planner needs
    _perfmaps    JIT perf maps kept with a profile and handed to perf script
    _artifacts   the file names of a profile's artifacts
    _service     Service: targets, jobs, outputs, folded views, stop/delete
    _pyspy       py-spy record runs, one per Python target
    _differential  GET /profiles/diff: two profiles' checks and labels over
                 tracecar_formats.diffgraph
    _flight      FlightRecorder: 19 Hz samples of the pod in a ring bounded by time and bytes
                 (bpftrace for every process, py-spy's whole stacks for Python ones)
    _ring        the recorder's ring: complete seconds, bounds, intervals, process groups
    _flightpy    one second of one Python process, by py-spy
    _jitnames    JIT frame names from perf maps, for the recorder
    _triggers    Triggers: CPU use above N% for S s -> a profile (cooldown, limit, retention)

The flow of one profile::

    targets (agent.procfs) -> planner.plan (pure; what dry_run shows)
      -> recorder.record (perf record, stoppable, keeps what it recorded)
      -> postprocess.perf_data_to_folded (perf script streamed into the collapser)
      -> flamegraph.svg, folded, speedscope.json, profile.pb.gz (atomic writes)

Artifacts of a profile job (``DATA_DIR/profile/<id>/``): ``perf.data``,
``folded.txt`` (default collapse options), ``flamegraph.svg``,
``speedscope.json``, ``profile.pb.gz``, copies of the targets' JIT perf maps
(``perf-PID.map``), and ``job.json`` with the metadata.
"""

from agent.profiling._artifacts import (
    ARTIFACTS,
    BPFTRACE_OUT,
    FOLDED,
    KIND,
    PERF_DATA,
    PPROF,
    SPEEDSCOPE,
    SVG,
)
from agent.profiling._differential import DiffFormat, DiffOptions, Widths, differential
from agent.profiling._flight import FlightRecorder, RecorderRequest, when
from agent.profiling._ring import GroupSamples, ProcessGroup, RssTrend, Slice
from agent.profiling._service import Service
from agent.profiling._triggers import Trigger, TriggerRequest, Triggers

__all__ = [
    "ARTIFACTS",
    "BPFTRACE_OUT",
    "FOLDED",
    "KIND",
    "PERF_DATA",
    "PPROF",
    "SPEEDSCOPE",
    "SVG",
    "DiffFormat",
    "DiffOptions",
    "FlightRecorder",
    "GroupSamples",
    "ProcessGroup",
    "RecorderRequest",
    "RssTrend",
    "Service",
    "Slice",
    "Trigger",
    "TriggerRequest",
    "Triggers",
    "Widths",
    "differential",
    "when",
]
