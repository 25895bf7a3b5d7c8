"""Start-up of ``kubectl tracecar``: ``.venv/bin/python bench/plugin_bench.py``.

kubectl runs the plugin as a fresh process for every command, so its start-up is what
a user waits for before anything happens (``--help`` most of all). Measured per whole
process, wall clock and CPU time (user + system, from ``getrusage``: what the process
itself costs, which a machine busy with other work inflates far less than the wall
clock), rounds alternating so a busy machine hits every arm alike:

- ``python -c pass``: the interpreter alone (the baseline, same interpreter and venv);
- ``kubectl-tracecar --help`` and ``kubectl-tracecar profile --help``: the console
  script kubectl finds on PATH;
- ``python -c "import kubernetes, httpx"``: for comparison, what the plugin no longer
  loads before a command needs the cluster or an agent.

Target (issue 19): ``kubectl tracecar --help`` in under 0.25 s (the median CPU time;
the wall clock equals it on an idle machine), printed with its ratio to the baseline.
Also checked: ``--help`` imports neither httpx nor the kubernetes client nor any
service. Runtime: about 30 s (``--rounds`` to change).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGET_S = 0.25

ARMS: dict[str, list[str]] = {
    "python -c pass (baseline)": [sys.executable, "-c", "pass"],
    "kubectl-tracecar --help": [str(BIN / "kubectl-tracecar"), "--help"],
    "kubectl-tracecar profile --help": [str(BIN / "kubectl-tracecar"), "profile", "--help"],
    "import kubernetes, httpx (not loaded)": [
        sys.executable,
        "-c",
        "import kubernetes, httpx",
    ],
}

_LOADED = (
    "import sys, kubectl_tracecar._cli as c; c.build_parser(); "
    "print(sorted({m.split('.')[0] for m in sys.modules} & "
    "{'httpx', 'kubernetes', 'urllib3', 'agent', 'webhook', 'certs', 'servicelog'}))"
)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _once(argv: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run."""
    cpu, start = _cpu(), time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, timeout=60, cwd=ROOT)
    return time.perf_counter() - start, _cpu() - cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    rounds = ap.parse_args().rounds
    for argv in ARMS.values():
        _once(argv)  # warm: bytecode written, files in the page cache
    wall: dict[str, list[float]] = {name: [] for name in ARMS}
    cpu: dict[str, list[float]] = {name: [] for name in ARMS}
    for _ in range(rounds):
        for name, argv in ARMS.items():
            w, c = _once(argv)
            wall[name].append(w)
            cpu[name].append(c)
    base = "python -c pass (baseline)"
    base_w, base_c = statistics.median(wall[base]), statistics.median(cpu[base])
    print(f"{rounds} rounds, arms alternating; per process, median wall clock and CPU time")
    for name in ARMS:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(
            f"  {name:<40} wall {w:6.3f} s ({w / base_w:4.1f}x)  "
            f"cpu {c:6.3f} s ({c / base_c:4.1f}x the baseline)"
        )
    loaded = subprocess.run(
        [sys.executable, "-c", _LOADED], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    print(f"  modules --help loads among httpx, kubernetes, urllib3 and the services: {loaded}")
    help_w = statistics.median(wall["kubectl-tracecar --help"])
    help_c = statistics.median(cpu["kubectl-tracecar --help"])
    ok = help_c < TARGET_S and loaded == "[]"
    print(
        f"kubectl tracecar --help: cpu {help_c:.3f} s ({help_c / base_c:.1f}x `python -c pass`, "
        f"{base_c:.3f} s), wall {help_w:.3f} s ({help_w / base_w:.1f}x, {base_w:.3f} s); "
        f"target < {TARGET_S} s: {'MET' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
