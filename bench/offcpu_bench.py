"""Overhead of an off-CPU profile on an app that switches context often: frame
pointers (bpftrace) vs DWARF (perf), each against the unprofiled app in the same run.

One command: ``.venv/bin/python bench/offcpu_bench.py [--pairs N] [--round-trips N]``.

The app: two threads passing a byte back and forth through two pipes, with a few
microseconds of work between passes, so it leaves and regains the CPU tens to
hundreds of thousands of times a second (the worst case for a recorder on every
context switch). It times its own round trips (wall and CPU, from inside). Each
round runs every arm once, in a rotating order; medians are compared:

* ``unprofiled``: the baseline;
* ``fp``: exactly the bpftrace program the planner builds (``call_graph: fp``): a
  probe on every switch, stacks walked in the kernel, 1-in-w sampling above
  ``offcpu_max_stacks_per_s``;
* ``dwarf, every switch``: the planner's ``perf record -e sched:sched_switch
  --switch-events --call-graph dwarf,8192`` with period 1 (a stack copy at every
  switch-out: the raw cost of DWARF per switch);
* ``dwarf, bounded``: the same with the period the planner picks from the app's
  switch rate (measured on a warm-up run, as the agent measures it before planning):
  at most ``offcpu_max_dwarf_stacks_per_s`` stacks copied a second;
* ``perf events alone``: the same perf command with a period no run reaches (no stack
  is ever copied): the floor of the DWARF recorder, the cost of perf events attached
  to the app's threads (the kernel switches them at every switch of those threads)
  and of the switch records.

Attached before the work starts. Printed per arm: the app's CPU and wall ratios to
the baseline, the cost per context switch of the app (its extra CPU time / its
switches), the recorder's own CPU, perf.data's size, perf's lost chunks, the
post-processing time (perf script + time weighting) and the number of stacks
folded (a run that recorded nothing cannot pass). Target: the default choice
(bounded DWARF) at most 5% more CPU for the busy app.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import procfs
from agent.profiling import offcpu_fold
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
ARMS = ("unprofiled", "fp", "dwarf, every switch", "dwarf, bounded", "perf events alone")
_LOST = re.compile(r"(?:lost|Lost) (\d+) chunks")


def ctxt() -> int:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("ctxt "):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    """utime + stime of a live process (and its reaped children), in seconds."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")


class Run:
    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self.switches = 0
        self.tool_cpu = 0.0
        self.stacks = 0
        self.lost = 0
        self.data_mb = 0.0
        self.post_s = 0.0


def tool_argv(arm: str, pid: int, out: Path, rate: float) -> list[str]:
    if arm == "perf events alone":
        # The DWARF recorder's floor: the same events on the app's threads, no stack ever.
        return offcpu_fold.perf_argv(pids=[pid], output=str(out), duration_s=120, stack_bytes=8,
                                period=10**9)  # fmt: skip
    facts = TargetFacts(pid, comm="pingpong", container="b", runtime="native",
                        switches_per_s=rate if arm == "dwarf, bounded" else 0.0)  # fmt: skip
    p = plan(
        ProfileRequest(
            type="off-cpu", pid=pid, duration_s=120, call_graph="fp" if arm == "fp" else "dwarf"
        ),
        targets=[facts],
        target="bench",
        limits=LIMITS,
        output=out,
        pid_ns=procfs.own_pid_ns(),
    )
    return p.bpftrace_argv if arm == "fp" else p.argv


def fold_perf(data: Path) -> int:
    script = subprocess.run(offcpu_fold.perf_script_argv(str(data)), capture_output=True,
                            check=True, timeout=600)  # fmt: skip
    folder = offcpu_fold.PerfTimedFolder()
    for line in script.stdout.splitlines():
        folder.feed(line)
    return len(folder.finish())


def run_once(binary: Path, round_trips: int, work: int, arm: str, tmp: Path, rate: float) -> Run:
    proc = subprocess.Popen(
        [str(binary), str(round_trips), str(work)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    tracer = None
    run = Run()
    data = tmp / "perf.data"
    try:
        if arm != "unprofiled":
            tracer = subprocess.Popen(
                tool_argv(arm, proc.pid, data, rate), stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True,
                env={**os.environ, **offcpu_fold.ENV},
            )  # fmt: skip
        time.sleep(3)  # attached (bpftrace parses BTF first) before the work starts
        assert proc.stdin is not None and proc.stdout is not None
        before = ctxt()
        proc.stdin.write(b"g")
        proc.stdin.flush()
        line = proc.stdout.readline().split()
        run.switches = ctxt() - before
        run.wall, run.cpu = float(line[0]), float(line[1])
        proc.wait(120)
        return run
    finally:
        if tracer is not None:
            run.tool_cpu = cpu_s(tracer.pid)
            os.killpg(tracer.pid, signal.SIGINT)
            out, err = tracer.communicate(timeout=600)
            if arm == "fp":
                run.stacks = len(offcpu_fold.parse_output(out.decode("utf-8", "replace")))
            else:
                run.lost = sum(int(x) for x in _LOST.findall(err.decode("utf-8", "replace")))
                run.data_mb = data.stat().st_size / 1e6
                t0 = time.monotonic()
                run.stacks = fold_perf(data)
                run.post_s = time.monotonic() - t0
                data.unlink()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _r(xs: list[float]) -> list[float]:
    return [round(x, 3) for x in xs]


def scenario(name: str, binary: Path, work: int, trips: int, pairs: int, tmp: Path) -> None:
    warm = run_once(binary, trips, work, "unprofiled", tmp, 0.0)
    # The app's own switches per second: 4 per round trip (what the agent measures).
    rate = 4 * trips / warm.wall
    runs: dict[str, list[Run]] = {a: [] for a in ARMS}
    for i in range(pairs):
        order = ARMS[i % len(ARMS):] + ARMS[:i % len(ARMS)]  # fmt: skip
        for arm in order:
            runs[arm].append(run_once(binary, trips, work, arm, tmp, rate))
    base = runs["unprofiled"]
    bw = statistics.median(r.wall for r in base)
    bc = statistics.median(r.cpu for r in base)
    period = offcpu_fold.dwarf_period(rate, max_stacks_per_s=LIMITS.offcpu_max_dwarf_stacks_per_s)
    print(f"\n{name}: {trips} round trips through pipes")
    print(f"  the app's switches: {rate:,.0f}/s ({4 * trips} per run); machine: "
          f"{statistics.median(r.switches / r.wall for r in base):,.0f}/s")  # fmt: skip
    print(f"  unprofiled: wall {bw:.3f} s  cpu {bc:.3f} s   cpu runs {_r([r.cpu for r in base])}")
    for arm in ARMS[1:]:
        rs = runs[arm]
        pw = statistics.median(r.wall for r in rs)
        pc = statistics.median(r.cpu for r in rs)
        per_switch_us = (pc - bc) / (4 * trips) * 1e6
        extra = f" (period {period})" if arm == "dwarf, bounded" else ""
        print(f"  {arm}{extra}:")
        print(f"    wall {pw:.3f} s  cpu {pc:.3f} s   cpu runs {_r([r.cpu for r in rs])}")
        print(f"    ratio to unprofiled: cpu {pc / bc:.3f}x  wall {pw / bw:.3f}x; "
              f"cost per context switch of the app: {per_switch_us:.2f} us of its CPU")  # fmt: skip
        tool = statistics.median(r.tool_cpu for r in rs)
        line = f"    recorder CPU {tool:.2f} s; folded stacks per run {[r.stacks for r in rs]}"
        if arm != "fp":
            line += (
                f"; perf.data {statistics.median(r.data_mb for r in rs):.0f} MB, lost chunks "
                f"{[r.lost for r in rs]}, perf script + weighting "
                f"{statistics.median(r.post_s for r in rs):.1f} s"
            )
        print(line)
        if arm == "dwarf, bounded" and "busy" in name:
            verdict = "OK" if pc / bc <= 1.05 else "ABOVE TARGET"
            print(f"    target (the default choice, busy app) cpu <= 1.05x: {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5, help="rounds (each runs every arm once)")
    ap.add_argument("--round-trips", type=int, default=200_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="offcpu-", dir="/var/tmp"))
    try:
        (tmp / "pingpong.c").write_text(PINGPONG_C)
        binary = tmp / "pingpong"
        subprocess.run(
            ["gcc", "-O2", "-fno-omit-frame-pointer", "-pthread", "-o", str(binary),
             str(tmp / "pingpong.c")],
            check=True,
        )  # fmt: skip
        print(f"off-CPU profile overhead, {args.pairs} rounds per scenario (medians)")
        for name, work, trips in (
            ("worst case: ~2 us of work between passes", 1500, args.round_trips),
            ("a busy app: ~25 us of work between passes", 20000, args.round_trips // 8),
        ):
            scenario(name, binary, work, trips, args.pairs, tmp)
    finally:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    main()
