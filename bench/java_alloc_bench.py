"""Overhead of a Java allocation profile by Java method (async-profiler's alloc mode, as
the agent drives it) on an allocation-heavy JVM, against JVMs of the same app
unprofiled in the same run; and what the agent's start and end of it take.

One command: ``.venv/bin/python bench/java_alloc_bench.py [--allocs N] [--rounds N]``.

The app: one Java thread allocating byte arrays of 16..4096 bytes (a pseudo-random
sequence; each kept in a ring of 64, so none is optimised away and each dies young),
with ``work`` iterations of arithmetic between allocations, timing itself from inside
(its own thread's CPU time, which holds the JVMTI sampling callbacks and the stack
walks; the collector's threads are not counted), one round per line read on stdin.
Two apps: ``storm`` (no work: as fast as the JVM allocates, the worst case) and
``typical`` (about 0.5 us of work per allocation, 0.8 us each in all here).

Arms, one JVM each, warmed up (JIT-compiled) before the first round, in a rotating
order per round, medians compared:

* ``unprofiled``: the baseline (a JVM that never had async-profiler loaded);
* ``alloc``: the agent's own code (agent.profiling._asyncprof: the copy in the JVM's
  /tmp, jattach load, start; stop and both dumps at the end) around each round, at the
  default interval (512 KiB);
* ``alloc, 16 KiB``: the same at a 32x finer interval (the sampling's cost curve).

Needs java, javac, jattach and async-profiler's library (scripts/setup fetches it).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.profiling import _asyncprof, javalloc

APP_JAVA = r"""
import java.io.*;
import java.lang.management.*;
public class Bench {
    static final byte[][] ring = new byte[64][];
    static volatile long sink;
    public static void main(String[] a) throws Exception {
        long work = Long.parseLong(a[0]);
        ThreadMXBean mx = ManagementFactory.getThreadMXBean();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        System.out.println("ready");
        String line;
        int x = 12345;
        while ((line = in.readLine()) != null) {
            long n = Long.parseLong(line.trim());
            long c0 = mx.getCurrentThreadCpuTime(), w0 = System.nanoTime();
            long s = 0;
            for (long i = 0; i < n; i++) {
                for (long k = 0; k < work; k++) s += k * x;
                x = x * 1103515245 + 12345;
                ring[(int) (i & 63)] = new byte[16 + ((x >>> 8) % 4080)];
            }
            sink = s;
            long c1 = mx.getCurrentThreadCpuTime(), w1 = System.nanoTime();
            System.out.println((c1 - c0) + " " + (w1 - w0));
        }
    }
}
"""

APPS = {"typical": 300, "storm": 0}
ARMS = {"unprofiled": 0, "alloc": javalloc.DEFAULT_INTERVAL, "alloc, 16 KiB": 16 * 1024}


class Jvm:
    def __init__(self, classes: Path, work: int) -> None:
        self.proc = subprocess.Popen(
            ["java", "-Xmx512m", "-cp", str(classes), "Bench", str(work)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def round(self, n: int) -> tuple[float, float]:
        """CPU and wall nanoseconds of n allocations."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        cpu, wall = self.proc.stdout.readline().split()
        return float(cpu), float(wall)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


async def profiled_round(
    jvm: Jvm, n: int, interval: int, costs: dict[str, list[float]]
) -> tuple[float, float, int]:
    lib = _asyncprof.library(None)
    run = _asyncprof.new_run(jvm.proc.pid)
    t0 = time.monotonic()
    await _asyncprof.start(run, lib=lib, interval=interval, timeout_s=600)
    t1 = time.monotonic()
    try:
        assert run.started, run.message
        cpu, wall = await asyncio.to_thread(jvm.round, n)
    finally:
        t2 = time.monotonic()
        await _asyncprof.finish(run, comm="java")
        t3 = time.monotonic()
    assert not run.message, run.message
    costs["start"].append(t1 - t0)
    costs["end"].append(t3 - t2)
    return cpu, wall, sum(run.stacks_count.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--allocs", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    why = _asyncprof.available(_asyncprof.library(None))
    if why is not None:
        raise SystemExit(why)
    with tempfile.TemporaryDirectory(prefix="java-alloc-bench-") as d:
        src = Path(d) / "Bench.java"
        src.write_text(APP_JAVA)
        subprocess.run(["javac", "-d", d, str(src)], check=True, timeout=120)
        print(f"{args.allocs} allocations of 16-4096 bytes a round, {args.rounds} rounds; "
              "the allocating thread's CPU time, medians")  # fmt: skip
        for app, work in APPS.items():
            jvms = {arm: Jvm(Path(d), work) for arm in ARMS}
            try:
                for jvm in jvms.values():  # JIT warm-up, not counted
                    for _ in range(2):
                        jvm.round(args.allocs)
                cpu: dict[str, list[float]] = {arm: [] for arm in ARMS}
                samples: dict[str, list[int]] = {arm: [] for arm in ARMS}
                costs: dict[str, list[float]] = {"start": [], "end": []}
                order = list(ARMS)
                for r in range(args.rounds):
                    for arm in order[r % len(order) :] + order[: r % len(order)]:
                        if ARMS[arm] == 0:
                            c, _ = jvms[arm].round(args.allocs)
                        else:
                            c, _, k = asyncio.run(
                                profiled_round(jvms[arm], args.allocs, ARMS[arm], costs)
                            )
                            samples[arm].append(k)
                        cpu[arm].append(c)
            finally:
                for jvm in jvms.values():
                    jvm.close()
            base = statistics.median(cpu["unprofiled"])
            print(f"\n{app} (work {work}): unprofiled {base / args.allocs:.1f} ns/allocation")
            for arm in ARMS:
                if ARMS[arm] == 0:
                    continue
                m = statistics.median(cpu[arm])
                print(
                    f"  {arm}: {m / base:.3f}x the unprofiled app "
                    f"({(m - base) / args.allocs:+.1f} ns/allocation; "
                    f"{statistics.median(samples[arm]):.0f} samples a round)"
                )
            print(
                f"  the agent's start (copy, jattach load, start) median "
                f"{statistics.median(costs['start']) * 1000:.0f} ms, its end (stop, two dumps, "
                f"read, clean up) {statistics.median(costs['end']) * 1000:.0f} ms"
            )


if __name__ == "__main__":
    main()
