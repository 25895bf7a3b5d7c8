"""CPU profiles with perf: plan, record, post-process (folded, SVG, speedscope, pprof).

Public surface: :class:`Service` (constructed by :mod:`agent.app` with the
settings and the shared :class:`agent.jobs.JobStore`; started and stopped by
the app's lifespan) and the artifacts' file names (``KIND``, ``ARTIFACTS``,
``PERF_DATA``, ``SVG``, ...). The output modules are public (the benchmarks
and tests drive them alone); the service's own pieces are private::

    planner      the request, the limits, plan() (pure; what dry_run shows)
    recorder     perf record: run, stop early, parse its stderr
    postprocess  perf script streamed into the collapser
    collapse     stackcollapse-perf: perf script output -> folded stacks
    flamegraph, speedscope, pprof    folded stacks -> each output format
    _targets     the facts about target processes the planner needs
    _perfmaps    JIT perf maps kept with a profile and handed to perf script
    _artifacts   the file names of a profile's artifacts
    _service     Service: targets, jobs, outputs, folded views, stop/delete

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
    FOLDED,
    KIND,
    PERF_DATA,
    PPROF,
    SPEEDSCOPE,
    SVG,
)
from agent.profiling._service import Service

__all__ = ["ARTIFACTS", "FOLDED", "KIND", "PERF_DATA", "PPROF", "SPEEDSCOPE", "SVG", "Service"]
