"""Start-up of ``kubectl tracecar``: ``.venv/bin/python bench/plugin_bench.py``.

kubectl runs the plugin as a fresh process for every command, so its start-up is what
a user waits for before anything happens (``--help`` most of all). Measured, as wall
clock of whole processes, rounds alternating so a busy machine hits every arm alike:

- ``python -c pass``: the interpreter alone (the baseline, same interpreter and venv);
- ``kubectl-tracecar --help`` and ``kubectl-tracecar profile --help``: the console
  script kubectl finds on PATH;
- ``python -c "import kubernetes, httpx"``: for comparison, what the plugin no longer
  loads before a command needs the cluster or an agent.

Target (issue 19): ``kubectl tracecar --help`` in under 0.25 s (the median), printed
with its ratio to the baseline. Also checked: ``--help`` imports neither httpx nor the
kubernetes client nor any service. Runtime: about 20 s (``--rounds`` to change).
"""

from __future__ import annotations

import argparse
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


def _once(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, timeout=60, cwd=ROOT)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    rounds = ap.parse_args().rounds
    for argv in ARMS.values():
        _once(argv)  # warm: bytecode written, files in the page cache
    times: dict[str, list[float]] = {name: [] for name in ARMS}
    for _ in range(rounds):
        for name, argv in ARMS.items():
            times[name].append(_once(argv))
    base = statistics.median(times["python -c pass (baseline)"])
    print(f"{rounds} rounds, arms alternating; median (min) wall clock per process")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<40} {med:6.3f} s ({min(ts):.3f} s)  {med / base:5.1f}x the baseline")
    loaded = subprocess.run(
        [sys.executable, "-c", _LOADED], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    print(f"  modules --help loads among httpx, kubernetes, urllib3 and the services: {loaded}")
    help_s = statistics.median(times["kubectl-tracecar --help"])
    ok = help_s < TARGET_S and loaded == "[]"
    print(
        f"kubectl tracecar --help: {help_s:.3f} s, {help_s / base:.1f}x `python -c pass` "
        f"({base:.3f} s); target < {TARGET_S} s: {'MET' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
