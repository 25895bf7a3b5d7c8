"""What profiling a Python app costs it: py-spy (the default for Python) and its mixed mode.

One command: ``.venv/bin/python bench/python_profiler_bench.py [--rounds N] [--work N]``.

The app: CPython 3.12 (started without any perf env var) running the tests' 3:1
hot/cold chain for a fixed amount of work, timing that work itself (wall time,
from inside). Each round runs three arms back to back, in a rotating order, so the
machine's noise falls on all of them alike:

* unprofiled: the baseline;
* ``py-spy`` as the agent runs it by default (``--nonblocking`` at 99 Hz: it reads
  the interpreter's memory without stopping it), the exact argv the planner builds;
* ``py-spy --native`` (``python_native: true``): mixed Python + native stacks, which
  must pause the process at each sample to unwind it.

Printed: the medians, each arm's ratio to the baseline, and the samples py-spy took
and dropped (so a run that sampled nothing cannot pass). Target: at most 3% for
the default mode; the mixed mode's cost is reported on its own (docs/profiling.md).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import _proc
from agent.profiling.planner import pyspy_argv
from tests.interpreters import PY312
from tracecar_formats import pyspy

APP = r"""
import sys, time

def hot(n):
    s = 0
    for i in range(n):
        s += i * i
    return s

def cold(n):
    return hot(n)

rounds = int(sys.argv[1])
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()  # the profiler is attached: go
t0 = time.perf_counter()
for _ in range(rounds):
    hot(30000); hot(30000); hot(30000); cold(30000)
print(time.perf_counter() - t0, flush=True)
"""


def run_arm(arm: str, *, work: int, script: Path, out_dir: Path) -> tuple[float, int, int]:
    """One run of the app under ``arm``: (its work's wall time, samples, dropped)."""
    app = subprocess.Popen(
        [PY312, str(script), str(work)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert app.stdout is not None and app.stdin is not None
    assert app.stdout.readline().strip() == "ready"
    spy = None
    if arm != "none":
        exe = _proc.python_tool("py-spy")
        assert exe, "py-spy is missing: run scripts/setup"
        argv = pyspy_argv(
            pyspy=exe,
            pid=app.pid,
            rate_hz=99,
            native=arm == "py-spy --native",
            output=out_dir / f"{arm.replace(' ', '')}.txt",
        )
        spy = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_BACKTRACE": "0"},
            start_new_session=True,
        )
        time.sleep(0.5)  # attached and sampling before the work starts
    app.stdin.write("go\n")
    app.stdin.flush()
    elapsed = float(app.stdout.readline())
    app.wait(timeout=30)
    samples = dropped = 0
    if spy is not None:
        os.killpg(spy.pid, signal.SIGINT)
        out, _ = spy.communicate(timeout=30)
        summary = pyspy.parse_stderr(out.decode("utf-8", "replace"))
        samples, dropped = summary.samples or 0, summary.errors
    return elapsed, samples, dropped


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--work", type=int, default=400, help="chain iterations per run (~2-3 s)")
    args = ap.parse_args()
    arms = ["none", "py-spy", "py-spy --native"]
    times: dict[str, list[float]] = {a: [] for a in arms}
    taken: dict[str, list[tuple[int, int]]] = {a: [] for a in arms}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "app.py"
        script.write_text(APP)
        for r in range(args.rounds):
            order = arms[r % 3 :] + arms[: r % 3]
            for arm in order:
                t, s, d = run_arm(arm, work=args.work, script=script, out_dir=Path(tmp))
                times[arm].append(t)
                taken[arm].append((s, d))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{a} {times[a][-1]:.3f}s" for a in arms), flush=True)  # fmt: skip
    base = statistics.median(times["none"])
    print(f"\nbaseline (unprofiled): median {base:.3f} s of work")
    ok = True
    for arm in arms[1:]:
        med = statistics.median(times[arm])
        ratio = med / base
        samples = sum(s for s, _ in taken[arm])
        dropped = sum(d for _, d in taken[arm])
        target = " (target <= 1.03)" if arm == "py-spy" else " (reported, no target)"
        print(
            f"{arm:16} median {med:.3f} s  ratio {ratio:.3f}{target}  "
            f"samples {samples}, dropped {dropped}"
        )
        if samples == 0:
            print(f"  FAIL: {arm} took no samples")
            ok = False
        if arm == "py-spy" and ratio > 1.03:
            ok = False
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
