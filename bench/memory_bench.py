"""Overhead of a memory profile (alloc, leak) on an allocation-heavy app, and the memory
the leak profile holds per tracked allocation, each against the same app unprofiled in
the same run.

One command: ``.venv/bin/python bench/memory_bench.py [--allocs N] [--rounds N] [--app A]``.

The app: one thread allocating and freeing (``malloc`` of 16..4096 bytes, ``free`` of
the block allocated 64 allocations earlier) with ``work`` iterations of arithmetic
between allocations, timing itself from inside (wall, after a SIGUSR1 sent once the
probes are in). Three apps: ``storm`` (no work: as many allocations a second as glibc
can serve, the worst case), ``busy`` (~7 us of work per allocation, ~140k allocations
a second) and ``typical`` (~25 us of work per allocation, ~40k a second). Arms, in a rotating
order per round, medians compared:

* ``unprofiled``: the baseline;
* ``alloc``: exactly the program the planner builds for ``type: alloc`` (the default
  sampling: one allocation under 64 KiB in 16, all larger ones);
* ``leak``: the same for ``type: leak`` (free probed too, sampled allocations tracked
  until freed), free probed past its first instruction as the agent does when bpftrace
  has offset support (scripts/setup's build; the bench says which bpftrace it ran);
* ``leak, free at its entry``: what a bpftrace without offset support (Debian's own)
  costs: glibc's free single-stepped on every call;
* ``alloc, every allocation``: ``sample_period: 1`` (the BPF side's worst case).

Then the leak profile's memory: bpftrace's BPF maps (``memlock`` of its map fds, all
preallocated) at two caps (``max_outstanding``), per tracked allocation; and the
agent-side cost (bpftrace's RSS) at the default cap.
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

from agent import _proc, capabilities, procfs
from agent.profiling import _alloc, alloc, memplan
from agent.profiling._targets import target_facts

APP_C = r"""
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
static volatile unsigned long sink;
int main(int argc, char **argv) {
    long n = atol(argv[1]), work = atol(argv[2]);
    void *ring[64] = {0};
    unsigned x = 12345;
    signal(SIGUSR1, on_usr1);
    printf("ready\n"); fflush(stdout);
    while (!go) pause();
    struct timespec a, b, ca, cb;
    clock_gettime(CLOCK_MONOTONIC, &a);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ca);
    for (long i = 0; i < n; i++) {
        for (long w = 0; w < work; w++) sink += w * x;
        x = x * 1103515245 + 12345;
        free(ring[i & 63]);
        ring[i & 63] = malloc(16 + (x >> 8) % 4080);
        *(volatile char *)ring[i & 63] = 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cb);
    printf("%.6f %.6f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9,
           (cb.tv_sec - ca.tv_sec) + (cb.tv_nsec - ca.tv_nsec) / 1e9);
    fflush(stdout);
    return 0;
}
"""

APPS = {"typical": 15000, "busy": 4000, "storm": 0}
ARMS = ("unprofiled", "alloc", "leak", "leak, free at its entry", "alloc, every allocation")


def build(tmp: Path) -> Path:
    src = tmp / "app.c"
    src.write_text(APP_C)
    out = tmp / "app"
    subprocess.run(
        ["gcc", "-O1", "-g", "-fno-omit-frame-pointer", "-o", str(out), str(src)],
        check=True,
        timeout=120,
    )
    return out


def bpftrace_offsets() -> bool:
    """The agent's own check: can this bpftrace probe past a function's entry?"""
    return asyncio.run(capabilities.bpftrace_offsets())


def program_for(pid: int, arm: str, *, cap: int = alloc.DEFAULT_MAX_OUTSTANDING) -> str:
    facts = _alloc.find_allocator(target_facts(procfs.process_info(pid)))
    _, text = memplan.plan_memory(
        kind="leak" if arm.startswith("leak") else "alloc",
        targets=[facts],
        pid_ns=procfs.own_pid_ns(),
        duration_s=600,
        period=1 if arm == "alloc, every allocation" else alloc.DEFAULT_PERIOD,
        max_outstanding=cap,
        probe_offsets=arm == "leak" and bpftrace_offsets(),
    )
    return text


def start_tracer(
    pid: int, text: str, out: Path, cap: int, kind: alloc.MemoryKind = "leak"
) -> subprocess.Popen[bytes]:
    env = {**os.environ, **alloc.env(max_outstanding=cap, kind=kind)}
    err = out.with_suffix(".err")
    with out.open("wb") as f, err.open("wb") as e:
        tracer = subprocess.Popen(alloc.argv(text, pids=[pid]), stdout=f, stderr=e, env=env)
    deadline = time.monotonic() + 120
    while alloc.ATTACHED not in out.read_text(errors="replace"):
        if time.monotonic() > deadline or tracer.poll() is not None:
            said = err.read_text(errors="replace")[-2000:]
            raise SystemExit(f"bpftrace did not attach: {out.read_text()[-2000:]} {said}")
        time.sleep(0.1)
    return tracer


def stop_tracer(tracer: subprocess.Popen[bytes]) -> None:
    tracer.send_signal(signal.SIGINT)
    try:
        tracer.wait(60)
    except subprocess.TimeoutExpired:
        tracer.kill()
        tracer.wait()


def run_once(binary: Path, arm: str, allocs: int, work: int, tmp: Path) -> tuple[float, float]:
    """The app's wall and CPU seconds for its allocations (the uprobes' cost is spent in
    the kernel on its threads: CPU time counts it without the machine's other load)."""
    app = subprocess.Popen([str(binary), str(allocs), str(work)], stdout=subprocess.PIPE, text=True)
    assert app.stdout is not None
    assert app.stdout.readline().strip() == "ready"
    tracer = None
    try:
        if arm != "unprofiled":
            kind: alloc.MemoryKind = "leak" if arm.startswith("leak") else "alloc"
            tracer = start_tracer(app.pid, program_for(app.pid, arm), tmp / "out.json",
                                  alloc.DEFAULT_MAX_OUTSTANDING, kind)  # fmt: skip
        os.kill(app.pid, signal.SIGUSR1)
        wall, cpu = (float(x) for x in app.stdout.readline().split())
        app.wait(60)
    finally:
        if tracer is not None:
            stop_tracer(tracer)
        if app.poll() is None:
            app.kill()
            app.wait()
    if tracer is not None:
        parsed = alloc.parse_output((tmp / "out.json").read_text(errors="replace"))
        counted = sum(s.calls for s in parsed.stats.values())
        assert counted >= allocs, f"{arm}: counted {counted} of {allocs} allocations"
    return wall, cpu


def maps_memlock(pid: int) -> int:
    """The bytes of BPF maps bpftrace holds (their fds' memlock, preallocated)."""
    total = 0
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = fd.read_text()
        except OSError:
            continue
        if "map_type:" in text:
            for line in text.splitlines():
                if line.startswith("memlock:"):
                    total += int(line.split()[1])
    return total


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def memory_per_allocation(binary: Path, tmp: Path) -> None:
    app = subprocess.Popen([str(binary), "1", "0"], stdout=subprocess.PIPE, text=True)
    assert app.stdout is not None
    app.stdout.readline()
    try:
        sizes: dict[int, tuple[int, int]] = {}
        for cap in (4096, alloc.DEFAULT_MAX_OUTSTANDING):
            tracer = start_tracer(app.pid, program_for(app.pid, "leak", cap=cap),
                                  tmp / "mem.json", cap)  # fmt: skip
            sizes[cap] = (maps_memlock(tracer.pid), rss_kib(tracer.pid))
            stop_tracer(tracer)
        tracer = start_tracer(app.pid, program_for(app.pid, "alloc"), tmp / "mem.json", 0,
                              "alloc")  # fmt: skip
        alloc_maps = maps_memlock(tracer.pid)
        stop_tracer(tracer)
    finally:
        app.kill()
        app.wait()
    (lo_maps, lo_rss), (hi_maps, hi_rss) = sizes[4096], sizes[alloc.DEFAULT_MAX_OUTSTANDING]
    per = (hi_maps - lo_maps) / (alloc.DEFAULT_MAX_OUTSTANDING - 4096)
    print(f"alloc memory: BPF maps {alloc_maps / 2**20:.1f} MiB ({alloc.ALLOC_MAP_KEYS} keys)")
    print(
        f"leak memory: BPF maps {lo_maps / 2**20:.1f} MiB at max_outstanding 4096, "
        f"{hi_maps / 2**20:.1f} MiB at {alloc.DEFAULT_MAX_OUTSTANDING} (the default cap): "
        f"{per:.0f} bytes per tracked allocation (preallocated at the cap); bpftrace's RSS "
        f"{lo_rss / 1024:.0f} MiB / {hi_rss / 1024:.0f} MiB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--allocs", type=int, default=200_000, help="allocations per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--memory-only", action="store_true", help="only the maps' memory")
    ap.add_argument(
        "--app", action="append", choices=sorted(APPS), help="only these apps (repeatable)"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        binary = build(tmp)
        offsets = bpftrace_offsets()
        print(
            f"bpftrace: {_proc.which('bpftrace')}, offset support: "
            + ("yes (leak: free probed past its first instruction)" if offsets else "NO")
        )
        if not offsets:
            print(
                "  this bpftrace cannot probe past free's entry: the leak arm costs what "
                "'free at its entry' does; scripts/setup installs one that can"
            )
        if args.memory_only:
            memory_per_allocation(binary, tmp)
            return
        worst = 0.0
        for app_name, work in APPS.items():
            if args.app and app_name not in args.app:
                continue
            # Fewer allocations when each carries work: every run takes seconds, not minutes.
            n = args.allocs if work == 0 else max(5_000, args.allocs // (1 + work // 400))
            times: dict[str, list[tuple[float, float]]] = {a: [] for a in ARMS}
            for r in range(args.rounds):
                order = ARMS[r % len(ARMS) :] + ARMS[: r % len(ARMS)]
                for arm in order:
                    times[arm].append(run_once(binary, arm, n, work, tmp))
            base = statistics.median(c for _, c in times["unprofiled"])
            base_wall = statistics.median(w for w, _ in times["unprofiled"])
            print(
                f"{app_name}: {n} allocations, {n / base:,.0f} allocations per CPU second "
                f"unprofiled ({base * 1e6 / n:.2f} us of CPU each with its work)"
            )
            for arm in ARMS[1:]:
                t = statistics.median(c for _, c in times[arm])
                wall = statistics.median(w for w, _ in times[arm])
                ratio = t / base
                worst = max(worst, ratio)
                print(
                    f"  {arm:26s} CPU x{ratio:7.2f} (+{(t - base) * 1e6 / n:.2f} us per "
                    f"allocation), wall x{wall / base_wall:7.2f}"
                )
        print(f"worst case: CPU x{worst:.2f}")
        memory_per_allocation(binary, tmp)


if __name__ == "__main__":
    main()
