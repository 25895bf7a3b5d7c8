"""Overhead of an off-CPU profile on an app that switches context often.

One command: ``.venv/bin/python bench/offcpu_bench.py [--pairs N] [--round-trips N]``.

The app: two threads passing a byte back and forth through two pipes, with a few
microseconds of work between passes, so it leaves and regains the CPU hundreds
of thousands of times a second (the worst case for a probe on every context
switch). It times its own round trips (wall and CPU, from inside). Runs
alternate unprofiled / profiled in the same invocation; medians are compared.
The profiled arm runs exactly the bpftrace program the agent's planner builds
for an off-CPU profile of the app's pid, attached before the work starts.
Also printed: the context switches per second seen (``/proc/stat`` ctxt), the
cost per switch of the app's threads, and the number of stacks the profile
folded (so a run that recorded nothing cannot pass). Target: at most 5% more CPU
time for the app (wall time printed too).
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

from agent import procfs
from agent.profiling import offcpu
from agent.profiling.planner import Limits, ProfileRequest, TargetFacts, plan

PINGPONG_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static int a[2], b[2];
static long n;
static double now(clockid_t c) {
    struct timespec t; clock_gettime(c, &t); return t.tv_sec + t.tv_nsec / 1e9;
}
__attribute__((noinline)) void *echo_thread(void *x) {
    char c;
    for (long i = 0; i < n; i++) {
        if (read(a[0], &c, 1) != 1 || write(b[1], &c, 1) != 1) break;
    }
    return x;
}
__attribute__((noinline)) void work(int k) {
    volatile unsigned long s = 0; for (int i = 0; i < k; i++) s += i;
}
int main(int argc, char **argv) {
    n = atol(argv[1]);
    int k = atoi(argv[2]);
    if (pipe(a) || pipe(b)) return 1;
    pthread_t t; pthread_create(&t, 0, echo_thread, 0);
    char go; if (fread(&go, 1, 1, stdin) != 1) return 1;   /* start when told */
    double w = now(CLOCK_MONOTONIC), c = now(CLOCK_PROCESS_CPUTIME_ID);
    char x = 'x';
    for (long i = 0; i < n; i++) {
        work(k);
        if (write(a[1], &x, 1) != 1 || read(b[0], &x, 1) != 1) return 1;
    }
    pthread_join(t, 0);
    printf("%f %f\n", now(CLOCK_MONOTONIC) - w, now(CLOCK_PROCESS_CPUTIME_ID) - c);
    return 0;
}
"""

LIMITS = Limits(
    default_duration_s=10,
    max_duration_s=300,
    default_frequency_hz=99,
    max_frequency_hz=999,
    timeout_slack_s=60,
)


def ctxt() -> int:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("ctxt "):
            return int(line.split()[1])
    return 0


def run_once(
    binary: Path, round_trips: int, work: int, *, profiled: bool
) -> tuple[float, float, int, int]:
    """(wall s, cpu s, context switches, folded stacks) of one run."""
    proc = subprocess.Popen(
        [str(binary), str(round_trips), str(work)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    tracer = None
    stacks = 0
    try:
        if profiled:
            p = plan(
                ProfileRequest(type="off-cpu", pid=proc.pid, duration_s=120),
                targets=[TargetFacts(proc.pid, comm="pingpong", container="b", runtime="native")],
                target="bench",
                limits=LIMITS,
                output=Path("unused"),
                pid_ns=procfs.own_pid_ns(),
            )
            tracer = subprocess.Popen(
                p.argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                start_new_session=True, env={**os.environ, **offcpu.ENV},
            )  # fmt: skip
            time.sleep(3)  # bpftrace attached (it parses BTF first) before the work starts
        else:
            time.sleep(3)
        assert proc.stdin is not None and proc.stdout is not None
        before = ctxt()
        proc.stdin.write(b"g")
        proc.stdin.flush()
        line = proc.stdout.readline().split()
        switches = ctxt() - before
        proc.wait(120)
        return float(line[0]), float(line[1]), switches, stacks
    finally:
        if tracer is not None:
            os.killpg(tracer.pid, signal.SIGINT)
            out, _ = tracer.communicate(timeout=60)
            stacks = len(offcpu.parse_output(out.decode("utf-8", "replace")))
            run_once.last_stacks = stacks  # type: ignore[attr-defined]
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _r(xs: list[float]) -> list[float]:
    return [round(x, 3) for x in xs]


def scenario(name: str, binary: Path, work: int, trips: int, pairs: int) -> None:
    base_w, base_c, prof_w, prof_c, rates, stack_counts = [], [], [], [], [], []
    for i in range(pairs):
        for profiled in (i % 2 == 1, i % 2 == 0):  # alternate which arm goes first
            w, c, switches, _ = run_once(binary, trips, work, profiled=profiled)
            (prof_w if profiled else base_w).append(w)
            (prof_c if profiled else base_c).append(c)
            if profiled:
                stack_counts.append(getattr(run_once, "last_stacks", 0))
            else:
                rates.append(switches / w)
    bw, pw = statistics.median(base_w), statistics.median(prof_w)
    bc, pc = statistics.median(base_c), statistics.median(prof_c)
    rate = statistics.median(rates)
    # Each round trip is 4 context switches of the app's two threads.
    per_switch_us = (pc - bc) / (4 * trips) * 1e6
    print(f"\n{name}: {trips} round trips through pipes")
    print(f"  context switches: {rate:,.0f}/s on the machine while the app runs")
    print(f"  unprofiled: wall {bw:.3f} s  cpu {bc:.3f} s   cpu runs {_r(base_c)}")
    print(f"  profiled:   wall {pw:.3f} s  cpu {pc:.3f} s   cpu runs {_r(prof_c)}")
    print(f"  folded stacks per profiled run: {stack_counts}")
    print(f"  cost per context switch of the app: {per_switch_us:.2f} us of its CPU time")
    # The verdict uses the app's own CPU time (the probe runs in its threads' context
    # when they switch out): on a shared 2-core machine wall time mostly measures the
    # neighbours (both are printed).
    verdict = "OK" if pc / bc <= 1.05 else "ABOVE TARGET"
    print(
        f"  ratio profiled/unprofiled: cpu {pc / bc:.3f}x  wall {pw / bw:.3f}x  "
        f"(target cpu <= 1.05x: {verdict})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--round-trips", type=int, default=200_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="offcpu-", dir="/var/tmp"))
    (tmp / "pingpong.c").write_text(PINGPONG_C)
    binary = tmp / "pingpong"
    subprocess.run(
        ["gcc", "-O2", "-fno-omit-frame-pointer", "-pthread", "-o", str(binary),
         str(tmp / "pingpong.c")],
        check=True,
    )  # fmt: skip
    print(f"off-CPU profile overhead, {args.pairs} alternating pairs per scenario (medians)")
    for name, work, trips in (
        ("worst case: ~2 us of work between passes", 1500, args.round_trips),
        ("a busy app: ~25 us of work between passes", 20000, args.round_trips // 8),
    ):
        scenario(name, binary, work, trips, args.pairs)
    subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    main()
