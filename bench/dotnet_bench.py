"""What the .NET knobs the webhook sets cost the app: the perf map
(``COMPlus_PerfMapEnabled=1``) and the runtime's event log (``COMPlus_EnableEventLog=1``
with its LTTng provider loaded, no session recording), against the same app without
them, in one run.

One command: ``.venv/bin/python bench/dotnet_bench.py [--rounds N]``.

A real .NET Core 3.1.23 runtime (tests/dotnet_workloads.py: PyPI's dotnetcore2 wheel,
C# compiled with mcs). Two measures, arms rotating each round so all see the same
machine load; medians compared:

* start-up: wall time from spawn to exit of an app that JITs ~300 generic method
  instantiations (each one is a perf-map line and a JIT event) and exits;
* steady state: the CPU time (user + system, from wait4) of a fixed amount of work
  (allocations, a throw/catch every 64 operations, virtual calls) minus a start-up's;
  CPU time rather than wall time: the machine is shared, and load shows in wall time.

Target: none fixed (this is the figure users need before turning the knobs on by
default); the perf map is expected near 1.0x steady state (it writes at JIT time
only), the event log to cost start-up and throw-heavy code more.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import dotnet_workloads as dn

BENCH_CS = r"""
using System;
using System.Collections.Generic;
using System.Diagnostics;

public interface IOp { long Run(long x); }
public sealed class Add : IOp { public long Run(long x) { return x + 3; } }
public sealed class Mul : IOp { public long Run(long x) { return x * 7 % 1000003; } }

public static class Gen<T> {
    public static int Touch(T v) { return v == null ? 0 : v.GetHashCode() & 1; }
}

public static class Bench {
    static int Startup() {
        // ~300 distinct JIT'd instantiations: what a real app's start-up compiles.
        int s = 0;
        s += Gen<int>.Touch(1) + Gen<long>.Touch(2) + Gen<string>.Touch("x");
        s += Many<int>() + Many<long>() + Many<short>() + Many<byte>() + Many<double>();
        s += Many<float>() + Many<uint>() + Many<ulong>() + Many<char>() + Many<bool>();
        return s;
    }

    static int Many<T>() {
        int s = 0;
        var l = new List<T>(); l.Add(default(T)); s += l.Count;
        var d = new Dictionary<int, T>(); d[1] = default(T); s += d.Count;
        var q = new Queue<T>(); q.Enqueue(default(T)); s += q.Count;
        var st = new Stack<T>(); st.Push(default(T)); s += st.Count;
        var h = new HashSet<T>(); h.Add(default(T)); s += h.Count;
        var a = new T[3]; Array.Reverse(a); s += a.Length;
        return s;
    }

    public static void Main(string[] args) {
        int s = Startup();
        if (args.Length == 0) { Console.WriteLine(s); return; }
        long rounds = long.Parse(args[0]);
        IOp[] ops = { new Add(), new Mul() };
        var keep = new List<int[]>();
        long x = 1;
        for (long r = 0; r < rounds; r++) {
            for (int i = 0; i < 64; i++) {
                x = ops[i & 1].Run(x);
                keep.Add(new int[8]);
                if (keep.Count > 4096) keep.Clear();
            }
            try { throw new InvalidOperationException("x"); }
            catch (InvalidOperationException) { x++; }
        }
        Console.WriteLine(x & 1);
    }
}
"""
REFS = (*dn.DEFAULT_REFS, "System.Collections", "System.Runtime.Extensions")


def arms(libs: Path) -> dict[str, dict[str, str]]:
    event_log = {"COMPlus_EnableEventLog": "1", "LD_LIBRARY_PATH": str(libs)}
    return {
        "baseline": {},
        "perf map": {"COMPlus_PerfMapEnabled": "1"},
        "event log": event_log,
        "both": {"COMPlus_PerfMapEnabled": "1", **event_log},
    }


def run(dotnet: Path, dll: Path, env: dict[str, str], *args: str) -> tuple[float, float]:
    """Wall time and CPU time (user + system, every thread) of one run of the app."""
    t0 = time.perf_counter()
    child = subprocess.Popen(
        [str(dotnet), str(dll), *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        cwd="/tmp",
    )
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"the bench app exited with {child.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--starts", type=int, default=5, help="start-ups per arm per round")
    ap.add_argument("--ops", type=int, default=40_000, help="steady state: rounds of 64 ops")
    a = ap.parse_args()
    dotnet = dn.ensure_runtime()
    dll = dn.build(BENCH_CS, name="bench", refs=REFS) / "bench.dll"
    libs = dn.ensure_lttng_ust_212()
    the_arms = arms(libs)
    # The event-log arm only counts if the provider really loads: check once.
    probe = subprocess.Popen(
        [str(dotnet), str(dll), str(1 << 40)],  # runs until killed
        env={**os.environ, **the_arms["event log"]},
        cwd="/tmp",
        stdout=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    loaded = "libcoreclrtraceptprovider.so" in Path(f"/proc/{probe.pid}/maps").read_text()
    probe.kill()
    probe.wait(30)
    print(f".NET {dn.VERSION}; event-log arm has the LTTng provider loaded: {loaded}")
    starts: dict[str, list[float]] = {k: [] for k in the_arms}
    start_cpu: dict[str, list[float]] = {k: [] for k in the_arms}
    work_cpu: dict[str, list[float]] = {k: [] for k in the_arms}
    names = list(the_arms)
    for r in range(a.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            env = the_arms[name]
            for _ in range(a.starts):
                wall, cpu = run(dotnet, dll, env)
                starts[name].append(wall)
                start_cpu[name].append(cpu)
            work_cpu[name].append(run(dotnet, dll, env, str(a.ops))[1])
        # perf maps the runs left in /tmp: remove them (one per process)
        for p in Path("/tmp").glob("perf-*.map"):
            if not Path(f"/proc/{p.stem[5:]}").exists():
                p.unlink(missing_ok=True)

    def steady(name: str) -> float:
        """CPU seconds of the fixed work alone: the run's CPU minus a start-up's."""
        return statistics.median(work_cpu[name]) - statistics.median(start_cpu[name])

    base_s = statistics.median(starts["baseline"])
    base_c = statistics.median(start_cpu["baseline"])
    base_w = steady("baseline")
    ops = a.ops * 64
    print(f"rounds {a.rounds}, {a.starts} start-ups per arm per round, {ops:,} ops of work")
    for name in names:
        s, c, w = statistics.median(starts[name]), statistics.median(start_cpu[name]), steady(name)
        print(
            f"{name:>10}: start-up {s * 1000:6.1f} ms wall = {s / base_s:.3f}x, "
            f"{c * 1000:6.1f} ms CPU = {c / base_c:.3f}x; steady {ops / w:,.0f} ops per "
            f"CPU-second = {base_w / w:.3f}x baseline throughput"
        )


if __name__ == "__main__":
    main()
