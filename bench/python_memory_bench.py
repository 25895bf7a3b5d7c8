"""Overhead of leak and alloc profiles in Python frames (tracemalloc, or tracecar's
sampling allocation tracer, injected into the target) on an allocation-heavy Python app,
against the same app unprofiled in the same run; tracemalloc's memory in the target per
live block it traces; and the sampler's accuracy (its estimate against the exact bytes
its wrappers counted).

One command: ``.venv/bin/python bench/python_memory_bench.py [--scale X] [--rounds N]``.

The app (CPython 3.12, pyenv's): one thread, 32 frames deep (as a web framework's
handler is), building small objects (a dict holding a str and a list: about five
allocations an iteration), keeping one in 100, with ``work`` iterations of Python that
allocate nothing between them, timing itself from inside (CPU and wall, after a
SIGUSR1 sent once tracing runs). Three apps: ``storm`` (no work: the allocator's worst
case), ``busy`` (2,000 steps of work an iteration: ~5 us per allocation) and ``typical``
(10,000: ~25 us per allocation, as bench/memory_bench.py's typical app). Mind that most
Python code allocates far more than this: every int above 256, float and str result is
an allocation, so "work" in real code is mostly allocations too.
Arms, in a rotating order per round, medians compared:

* ``unprofiled``: the baseline;
* ``tracemalloc, N frames``: the agent's own path (:class:`agent.profiling._pymem.Window`:
  the code injected by pyinjector at a safe point, tracemalloc started with N frames,
  the snapshot written and read back at the end), N = 1, 16 (the default) and 64;
* ``alloc sampler, N KiB``: an alloc profile's path (the same Window, ``kind="alloc"``:
  agent/profiling/pyalloc_sampler.c built here with gcc, loaded with ctypes, Python's
  allocators wrapped, one sample per N KiB on average, 16 frames), N = 512 (the
  default) and 16 (32 times more samples: the cost of the samples themselves).

The injections' latencies (start: until tracing runs; end: until the stacks are read
back) are printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.profiling import _pymem, _pysampler, pyalloc, pymem
from agent.profiling.memplan import PythonFrames, PythonFramesTarget

PYTHON = "/root/.pyenv/versions/3.12.1/bin/python3.12"

APP = r"""
import os, signal, sys, time
n, work = int(sys.argv[1]), int(sys.argv[2])
SPIN = (0,) * work  # iterating a tuple and toggling a small int: work that allocates nothing
go = False
def on_usr1(s, f):
    global go
    go = True
signal.signal(signal.SIGUSR1, on_usr1)
print("ready", flush=True)
while not go:
    signal.pause()
def step(i):
    s = 0
    for _ in SPIN:
        s ^= 1
    return {"i": i, "s": str(i * 7), "l": [i, s]}
def deep(depth):
    # A stack 32 frames deep, as a web framework's handler has: where frames cost.
    if depth:
        return deep(depth - 1)
    keep = []
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        obj = step(i)
        if i % 100 == 0:
            keep.append(obj)
    return time.perf_counter() - w0, time.process_time() - c0
print(*deep(32), flush=True)
while True:
    signal.pause()
"""

# name: (steps of work an iteration, iterations a run): ~0.6 s a run unprofiled.
APPS = {"typical": (10_000, 5_000), "busy": (2_000, 25_000), "storm": (0, 600_000)}
FRAMES = (1, pymem.DEFAULT_FRAMES, 64)
INTERVALS_KIB = (pyalloc.DEFAULT_INTERVAL_BYTES // 1024, 16)
ARMS = (
    "unprofiled",
    *(f"tracemalloc, {f} frames" for f in FRAMES),
    *(f"alloc sampler, {k} KiB" for k in INTERVALS_KIB),
)


def _frames(arm: str) -> int:
    return int(arm.split(", ")[1].split()[0]) if arm.startswith("tracemalloc") else 16


def _interval(arm: str) -> int | None:
    return int(arm.split(", ")[1].split()[0]) * 1024 if arm.startswith("alloc") else None


async def run_once(app: Path, arm: str, n: int, work: int) -> tuple[float, float, dict[str, float]]:
    # A plain child (the bench times the app, not the loop): started before any await.
    proc = subprocess.Popen(  # noqa: ASYNC220
        [PYTHON, str(app), str(n), str(work)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    lat: dict[str, float] = {}
    window = None
    try:
        if arm != "unprofiled":
            plan = PythonFrames(
                frames=_frames(arm),
                interval_bytes=_interval(arm),
                targets=[PythonFramesTarget(pid=proc.pid, directory="/tmp")],
            )
            kind = "alloc" if _interval(arm) else "leak"
            window = _pymem.Window(plan, comms={proc.pid: "python3.12"}, timeout_s=600, kind=kind)
            t = time.monotonic()
            await window.start()
            lat["start"] = time.monotonic() - t
            if not window.opened:
                raise SystemExit(f"{arm}: {window.failure()}")
        os.kill(proc.pid, signal.SIGUSR1)
        line = await asyncio.to_thread(proc.stdout.readline)
        wall, cpu = (float(x) for x in line.split())
        if window is not None:
            t = time.monotonic()
            await window.end(keep=True)
            lat["end"] = time.monotonic() - t
            s = window.summary()[str(proc.pid)]
            assert isinstance(s, dict)
            if s["error"]:
                raise SystemExit(f"{arm}: {s['error']}")
            if kind == "alloc":
                lat["estimated"] = float(s["bytes_estimated"])  # type: ignore[arg-type]
                lat["exact"] = float(s["bytes_exact"])  # type: ignore[arg-type]
                lat["samples"] = float(s["samples"])  # type: ignore[arg-type]
            else:
                lat["blocks"] = float(s["outstanding_blocks"])  # type: ignore[arg-type]
                lat["overhead"] = float(s["tracemalloc_overhead_bytes"])  # type: ignore[arg-type]
    finally:
        proc.kill()
        proc.wait()
    return wall, cpu, lat


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="iterations, times this")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if _pymem.available() is not None:
        raise SystemExit(_pymem.available())
    with tempfile.TemporaryDirectory() as d:
        lib, how = await _pysampler.locate(prebuilt=None, build_dir=Path(d) / "native")
        if lib is None:
            raise SystemExit(how)
        app = Path(d) / "app.py"
        app.write_text(APP)
        worst = 0.0
        latencies: list[dict[str, float]] = []
        errors: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for name, (work, n) in APPS.items():
            n = max(1, round(n * args.scale))
            times: dict[str, list[tuple[float, float]]] = {a: [] for a in ARMS}
            for r in range(args.rounds):
                for arm in ARMS[r % len(ARMS) :] + ARMS[: r % len(ARMS)]:
                    wall, cpu, lat = await run_once(app, arm, n, work)
                    times[arm].append((wall, cpu))
                    if lat:
                        latencies.append(lat)
                    if "exact" in lat:
                        err = abs(lat["estimated"] - lat["exact"]) / lat["exact"]
                        errors.setdefault((name, arm), []).append((err, lat["samples"]))
            base = statistics.median(c for _, c in times["unprofiled"])
            base_wall = statistics.median(w for w, _ in times["unprofiled"])
            print(
                f"{name}: {n} iterations (5 allocations each), {base * 1e6 / n / 5:.2f} us of "
                "CPU per allocation with its work, unprofiled"
            )
            for arm in ARMS[1:]:
                t = statistics.median(c for _, c in times[arm])
                wall = statistics.median(w for w, _ in times[arm])
                worst = max(worst, t / base)
                default = (
                    " (default)"
                    if _interval(arm) == pyalloc.DEFAULT_INTERVAL_BYTES
                    or (_interval(arm) is None and _frames(arm) == pymem.DEFAULT_FRAMES)
                    else ""
                )
                print(
                    f"  {arm + default:36s} CPU x{t / base:5.2f} "
                    f"(+{(t - base) * 1e6 / n / 5:.2f} us per allocation), "
                    f"wall x{wall / base_wall:5.2f}"
                )
        print(f"worst case: CPU x{worst:.2f}")
        starts = [x["start"] for x in latencies]
        ends = [x["end"] for x in latencies]
        per_block = [x["overhead"] / x["blocks"] for x in latencies if x.get("blocks")]
        print("alloc sampler: estimated bytes against the exact bytes its wrappers counted")
        for (name, arm), runs in errors.items():
            errs = [e for e, _ in runs]
            samples = statistics.median(n for _, n in runs)
            print(
                f"  {name}, {arm}: median error {statistics.median(errs):.1%}, worst "
                f"{max(errs):.1%} over {len(errs)} runs, median {samples:.0f} samples a run "
                f"(expected spread 1/sqrt(samples): {1 / max(samples, 1) ** 0.5:.1%})"
            )
        print(
            f"injection: start (until tracing runs) median {statistics.median(starts):.2f} s, "
            f"end (until the stacks are read back) median {statistics.median(ends):.2f} s"
        )
        print(
            f"tracemalloc's memory in the target at the end: median "
            f"{statistics.median(per_block):.0f} bytes per live block traced"
        )


if __name__ == "__main__":
    asyncio.run(main())
