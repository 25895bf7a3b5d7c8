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
shared with the plugin. The service's own pieces (a name with ``_`` is private to the
package; the app and routers use what this module exports)::

  a profile
    planner          the request, the limits, plan() (pure; what dry_run shows)
    _targets         the facts about target processes the planner needs
    _service         Service: targets, jobs, outputs, folded views, progress, stop/delete
    _result          ProfileResult (a profile job's typed result), ProfileView (its answer)
    _artifacts       the file names of a profile's artifacts
    perf_record      perf record: run, stop early, parse its stderr
    perf_script      perf script streamed into the collapser (perf.data -> folded)
    _pyspy_record    py-spy record runs, one per Python target
    _perfmaps        JIT perf maps kept with a profile and handed to perf script
    outputs          the RenderInfo of each kind of profile; rendering in worker threads
  off-CPU profiles
    offcpu_fold      the bpftrace programs and the perf command, their outputs -> folded
                     stacks weighted by time off CPU (pure; the recorder's sampler too)
    _offcpu_run      the bpftrace run, perf script's time weighting, whether perf can
                     record tracepoints here, the targets' switch rates
  comparing
    _profile_diff    GET /profiles/diff: two profiles' checks and labels over
                     tracecar_formats.diffgraph
  the flight recorder
    _flight_recorder FlightRecorder: 19 Hz samples of the pod in a ring bounded by time and
                     bytes (bpftrace for every process, py-spy's whole stacks for Python ones)
    _flight_ring     its ring: complete seconds, bounds, intervals, process groups, merging
    _flight_recorder_python  one second of one Python process, by py-spy
    _jitnames        JIT frame names from perf maps, for the recorder
  triggers
    _triggers        Triggers: CPU use above N% for S s -> a profile (cooldown, limit,
                     retention)
  memory profiles (alloc, leak)
    alloc            the bpftrace program on the C allocator, its output -> folded stacks
                     by bytes and by allocations (pure)
    memplan          the plan: allocators, sampling, what each runtime shows (pure)
    _alloc           each target's allocator, the bpftrace run, symbols kept for targets
                     that exit, the outputs in both weights
    javalloc         Java methods (alloc, JVMs): async-profiler's commands, its collapsed
                     output -> folded stacks under [java] (pure)
    _asyncprof       async-profiler loaded into each JVM through jattach: the library's
                     copy, start, stop, both dumps, nothing left in the JVM

The flow of one profile::

    targets (agent.procfs) -> planner.plan (pure; what dry_run shows)
      -> perf_record.record (perf record, stoppable, keeps what it recorded)
      -> perf_script.perf_data_to_folded (perf script streamed into the collapser)
      -> outputs: flamegraph.svg, folded, speedscope.json, profile.pb.gz (atomic writes,
         rendered in a worker thread)

Artifacts of a profile job (``DATA_DIR/profile/<id>/``): ``perf.data``,
``folded.txt`` (default collapse options), ``flamegraph.svg``,
``speedscope.json``, ``profile.pb.gz``, copies of the targets' JIT perf maps
(``perf-PID.map``), and ``job.json`` with the metadata.
"""

from agent.profiling._alloc import COUNT_SUFFIX, Weight, require_weight, weighted
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
from agent.profiling._flight_recorder import (
    ContinuousPushes,
    FlightRecorder,
    PushedInterval,
    RecorderMemory,
    RecorderRequest,
    RecorderStatus,
    when,
)
from agent.profiling._flight_ring import GroupSamples, ProcessGroup, RssTrend, Slice
from agent.profiling._profile_diff import DiffFormat, DiffOptions, Widths, differential
from agent.profiling._result import ProfileResult, ProfileView, RssTrendView, Unresolved
from agent.profiling._service import ProfileJob, Service
from agent.profiling._triggers import Capture, Skip, Trigger, TriggerRequest, Triggers, TriggerView
from agent.profiling.outputs import interval_info, render_in_thread

__all__ = [
    "ARTIFACTS",
    "BPFTRACE_OUT",
    "COUNT_SUFFIX",
    "FOLDED",
    "KIND",
    "PERF_DATA",
    "PPROF",
    "SPEEDSCOPE",
    "SVG",
    "Capture",
    "ContinuousPushes",
    "DiffFormat",
    "DiffOptions",
    "FlightRecorder",
    "GroupSamples",
    "ProcessGroup",
    "ProfileJob",
    "ProfileResult",
    "ProfileView",
    "PushedInterval",
    "RecorderMemory",
    "RecorderRequest",
    "RecorderStatus",
    "RssTrend",
    "RssTrendView",
    "Service",
    "Skip",
    "Slice",
    "Trigger",
    "TriggerRequest",
    "TriggerView",
    "Triggers",
    "Unresolved",
    "Weight",
    "Widths",
    "differential",
    "interval_info",
    "render_in_thread",
    "require_weight",
    "weighted",
    "when",
]
