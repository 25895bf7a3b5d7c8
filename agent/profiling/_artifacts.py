"""The artifacts of a profile job: their file names in ``DATA_DIR/profile/<id>/``.

``ARTIFACTS`` maps the output formats a client may ask for to their files.
"""

from __future__ import annotations

from agent.profiling.planner import OutputFormat

KIND = "profile"
PERF_DATA = "perf.data"
FOLDED = "folded.txt"
SVG = "flamegraph.svg"
SPEEDSCOPE = "speedscope.json"
PPROF = "profile.pb.gz"
BPFTRACE_OUT = "bpftrace.json"
"""An off-CPU profile's raw record (its perf.data): bpftrace's JSON output."""
ARTIFACTS: dict[OutputFormat, str] = {
    "svg": SVG,
    "folded": FOLDED,
    "speedscope": SPEEDSCOPE,
    "pprof": PPROF,
}
