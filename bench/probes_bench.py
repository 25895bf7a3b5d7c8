"""Uprobes: delivery rate to an HTTP client, and the cost of a probe on the traced app.

One command: ``.venv/bin/python bench/probes_bench.py [--seconds S] [--calls N]``.

Everything runs in one simulated pod (tests/podsim.py): the agent in its own
container, a C workload in another, its binary only reachable through
/proc/PID/root.

1. Delivery. The workload calls ``hot(i)`` in a tight loop. Baseline: bpftrace
   running the very program the agent generates (events mode, one int
   argument), its output written straight to a file (as cheap a sink as
   /dev/null, and countable). Then the agent: the same probe through
   ``POST /probes``, streamed as NDJSON by an httpx client. Reported: hits per
   second each delivered, their ratio (target >= 50%), and the drops the agent
   reported (rate limit plus events the tracer lost): never silent. Here the
   uprobe's own cost bounds the hit rate, so the agent's in-process capacity on
   the very lines bpftrace printed is reported too (its headroom).
2. Cost on the app. The workload times N calls of ``hot`` itself, without a
   probe and with a count probe attached through the agent (bpftrace), runs
   alternating; the difference per call is the cost per hit in microseconds
   (the kernel's uprobe round trip is the floor).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.probes import _bpftrace
from agent.probes._plan import Spec
from tests import podsim

WORK_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
volatile long sink;
__attribute__((noinline)) long hot(long i) { volatile long r = i * 3 + 1; return r; }
static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9;
}
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    if (n == 0) { for (long i = 0;; i++) sink += hot(i); }          /* spin forever */
    for (int run = 1;; run++) {                                      /* timed batches */
        char go[64], res[64];
        snprintf(go, sizeof go, "/tmp/go-%d", run);
        while (access(go, F_OK) != 0) usleep(2000);
        double t0 = now();
        for (long i = 0; i < n; i++) sink += hot(i);
        double dt = now() - t0;
        snprintf(res, sizeof res, "/tmp/res-%d", run);
        FILE *f = fopen(res, "w"); fprintf(f, "%.9f\n", dt); fclose(f);
    }
}
"""


def compile_workload(out: Path) -> Path:
    src = out / "probe_bench.c"
    src.write_text(WORK_C)
    exe = out / "probe_bench"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def spec_for(pid: int, seconds: float) -> Spec:
    return Spec(
        pid=pid,
        binary="/srv/probe_bench",
        host_binary=f"/proc/{pid}/root/srv/probe_bench",
        function="hot",
        address=None,
        mode="events",
        of="latency",
        args=("int",),
        retval=False,
        retval_type="int",
        stack=False,
        duration_s=seconds,
        max_events=10**9,
    )


def baseline_count(pod: podsim.SimPod, pid: int, seconds: float, out: Path) -> tuple[float, int]:
    """bpftrace itself, the agent's program, its output straight to a file: lines per second."""
    program = _bpftrace.program(spec_for(pid, seconds))
    argv = " ".join(_bpftrace.argv("PROGRAM", pid)[:-2])
    script = f'{argv} -e "$PROGRAM" 2>/dev/null > {out}'
    c = pod.run("baseline", ["sh", "-c", script], env={"PROGRAM": program})
    c.launcher.wait(seconds + 60)
    lines = out.read_bytes().count(b"\n")
    return lines / seconds, lines


def pipeline_capacity(pid: int, recorded: Path) -> float:
    """The agent's own share, in-process: parse bpftrace's real output, buffer, render NDJSON."""
    from agent.probes._plan import Hit
    from agent.probes._render import render_batch
    from agent.probes._stream import EventStream

    lines = recorded.read_bytes().splitlines()
    parser = _bpftrace.Parser(spec_for(pid, 1.0))
    stream = EventStream(capacity=8192, rate=10**9)
    t0 = time.perf_counter()
    batch: list[dict[str, object]] = []
    for line in lines:
        item = parser.feed(line)
        if isinstance(item, Hit) and stream.publish(item.event):
            batch.append(item.event)
            if len(batch) == 4096:
                render_batch(batch, sse=False)
                batch = []
    render_batch(batch, sse=False)
    return len(lines) / (time.perf_counter() - t0)


def agent_delivery(agent: podsim.AgentHandle, pid: int, seconds: float) -> dict[str, float]:
    with agent.client() as c:
        r = c.post(
            "/probes",
            json={"pid": pid, "function": "hot", "args": ["int"], "duration_s": seconds},
        )
        r.raise_for_status()
        probe = r.json()
        hits = 0
        t0 = time.monotonic()
        with c.stream("GET", f"/probes/{probe['id']}/events") as resp:
            for line in resp.iter_lines():
                if line.startswith('{"type":"hit"'):
                    hits += 1
        elapsed = time.monotonic() - t0
        state = c.get(f"/probes/{probe['id']}").json()
    return {
        "rate": hits / seconds,
        "streamed": hits,
        "elapsed": elapsed,
        "hits": state["hits"],
        "drops": state["drops"],
        "dropped_by_rate_limit": state["dropped_by_rate_limit"],
        "lost_by_tracer": state["lost_by_tracer"],
    }


def timed_batch(app: podsim.Container, run: int) -> float:
    root = Path(f"/proc/{app.host_pid}/root/tmp")
    (root / f"go-{run}").write_text("")
    res = root / f"res-{run}"
    deadline = time.monotonic() + 300
    while not res.exists() or not res.read_text().strip():
        if time.monotonic() > deadline:
            raise TimeoutError("timed batch did not finish")
        time.sleep(0.005)
    return float(res.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each delivery run")
    ap.add_argument("--calls", type=int, default=200_000, help="calls per timed batch")
    ap.add_argument("--pairs", type=int, default=5, help="alternating cost runs")
    ap.add_argument("--runs", type=int, default=3, help="alternating delivery runs")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="probes-bench-", dir="/var/tmp"))
    exe = compile_workload(work)
    env = {
        # Measure the pipeline itself: no rate limit in the way (drops are still reported).
        "TRACECAR_AGENT_PROBE_MAX_EVENT_RATE": str(10**8),
        "TRACECAR_AGENT_PROBE_MAX_EVENTS": str(10**9),
    }
    try:
        run_all(args, work, exe, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_all(args: argparse.Namespace, work: Path, exe: Path, env: dict[str, str]) -> None:
    with podsim.sim_pod(work / "pod") as pod:
        agent = podsim.start_agent(pod, env=env)
        spin = pod.run("spin", ["/srv/probe_bench", "0"], files={"probe_bench": exe})
        time.sleep(0.5)

        print(f"== 1. delivery: hot(i) in a tight loop, {args.seconds:g} s per run ==")
        recorded = work / "bpftrace-output.json"
        base_rates: list[float] = []
        runs: list[dict[str, float]] = []
        for _ in range(args.runs):  # alternating arms: both see the same machine load
            base_rate, base_lines = baseline_count(pod, spin.pid, args.seconds, recorded)
            base_rates.append(base_rate)
            runs.append(agent_delivery(agent, spin.pid, args.seconds))
            print(
                f"  run: bpftrace -> file {base_rate:10,.0f} hits/s ({base_lines:,} lines) | "
                f"agent -> HTTP {runs[-1]['rate']:10,.0f} hits/s "
                f"({runs[-1]['streamed']:,.0f} of {runs[-1]['hits']:,.0f} hits, "
                f"drops {runs[-1]['drops']:,.0f})"
            )
        base_rate = statistics.median(base_rates)
        got = sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]
        print(f"bpftrace -> file (baseline) : {base_rate:12,.0f} hits/s (median)")
        print(
            f"agent -> HTTP NDJSON client : {got['rate']:12,.0f} hits/s (median; "
            f"{got['streamed']:,.0f} streamed of {got['hits']:,.0f} hits)"
        )
        print(
            f"   drops reported: {got['drops']:,.0f} (rate limit "
            f"{got['dropped_by_rate_limit']:,.0f}, lost by tracer {got['lost_by_tracer']:,.0f})"
        )
        ratio = got["rate"] / base_rate if base_rate else float("nan")
        print(f"ratio agent/bpftrace: {ratio:.2f} (target >= 0.50)")
        capacity = pipeline_capacity(spin.pid, recorded)
        print(
            f"agent pipeline capacity (parse + buffer + NDJSON, in-process, same lines): "
            f"{capacity:,.0f} lines/s"
        )
        spin.stop()

        print(f"\n== 2. cost on the app: {args.calls:,} calls of hot() per run ==")
        app = pod.run("timed", ["/srv/probe_bench", str(args.calls)], files={"probe_bench": exe})
        run = 0
        bare: list[float] = []
        probed: list[float] = []
        with agent.client() as c:
            for _ in range(args.pairs):
                run += 1
                bare.append(timed_batch(app, run))
                r = c.post(
                    "/probes",
                    json={"pid": app.pid, "function": "hot", "mode": "count", "duration_s": 600},
                )
                r.raise_for_status()
                pid_ = r.json()["id"]
                run += 1
                probed.append(timed_batch(app, run))
                state = c.delete(f"/probes/{pid_}").json()
                assert state["hits"] == args.calls, state["hits"]
        b, p = statistics.median(bare), statistics.median(probed)
        per_hit = (p - b) / args.calls * 1e6
        print(f"without probe: {b * 1e3:9.2f} ms   ({b / args.calls * 1e9:.1f} ns per call)")
        print(f"count probe  : {p * 1e3:9.2f} ms   ({p / args.calls * 1e9:.1f} ns per call)")
        print(f"cost per hit : {per_hit:.2f} us (median of {args.pairs} alternating pairs)")
        print(
            json.dumps(
                {"delivery_ratio": ratio, "capacity_lines_s": capacity, "cost_per_hit_us": per_hit}
                | got
            )
        )


if __name__ == "__main__":
    main()
