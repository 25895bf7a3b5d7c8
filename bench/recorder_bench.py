"""The flight recorder at 19 Hz: its cost on a CPU-bound app (C, and Python, which
the recorder samples with py-spy for whole Python stacks), the agent's own cost (CPU,
memory, ring bytes) per hour of retained window, and how far behind real time the
ring is.

One command: ``.venv/bin/python bench/recorder_bench.py [--pairs N] [--soak S]``.

A real agent (``python -m agent`` on this machine, its own data directory) and a
CPU-bound app that times its own work (wall and CPU, from inside): a C program, then
a Python one (Python 3.12 when installed, else the bench's own). Runs alternate
unrecorded / recorded (``POST /recorder`` for the app's pid at the default 19 Hz
before the work starts, ``DELETE`` after) in the same invocation; medians are
compared. Target: recorded at most 1% slower (the app's CPU time; wall printed
too). Then a soak per app: the recorder on a long-running app for ``--soak``
seconds, measuring the agent's CPU time with its children's (bpftrace, py-spy's
one-second runs: counted once reaped, after DELETE) and RSS, the ring's bytes per
hour of retained window (bounded by ``max_bytes`` whatever the rate; 16 MiB by
default), and the lag ``GET /recorder`` reports, polled every 0.25 s (target: under
2 s).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent

WORK_PY = r"""
import sys, time

def step(n):
    s = 0
    for i in range(n):
        s += (i * i) ^ (s >> 3)
    return s

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 40
sys.stdin.read(1)  # start when told
w, c = time.monotonic(), time.process_time()
k = 0
while rounds == 0 or k < rounds:
    step(200000)
    k += 1
print(f"{time.monotonic() - w} {time.process_time() - c}", flush=True)
"""
sys.path.insert(0, str(REPO))  # run as a script: the repository's tests package
from bench._common import build_work, proc_cpu_s, rss_mb, running_agent  # noqa: E402
from tests.interpreters import PY312  # noqa: E402

BENCH_TOKEN = "recorder-bench-token-0123456789"  # a throwaway, local


def run_once(app: list[str], client: httpx.Client, *, recorded: bool) -> tuple[float, float]:
    proc = subprocess.Popen(app, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        if recorded:
            r = client.post("/recorder", json={"pid": proc.pid})
            assert r.status_code == 201, r.text
        time.sleep(3)  # bpftrace attached (it parses BTF first) before the work starts
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"g")
        proc.stdin.flush()
        line = proc.stdout.readline().split()
        proc.wait(120)
        if recorded:
            time.sleep(1.5)  # the last second's counts arrive
            status = client.get("/recorder").json()
            assert status["samples"] > 0, f"the recorder recorded nothing: {status}"
        return float(line[0]), float(line[1])
    finally:
        if recorded:
            client.delete("/recorder")
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--soak", type=float, default=60.0)
    ap.add_argument("--rss", action="store_true", help="only the cost of RSS sampling")
    ap.add_argument("--sleepers", type=int, default=50, help="--rss: idle processes recorded")
    ap.add_argument(
        "--busy",
        type=int,
        default=0,
        help="busy loops run beside the app throughout (a loaded machine: the lag target "
        "holds under load)",
    )
    ap.add_argument("--only", choices=("c", "python"), help="one app only")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="recorder-", dir="/var/tmp"))
    binary = build_work(tmp)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        with running_agent(tmp / "data", token=BENCH_TOKEN) as (agent, client):
            if args.rss:
                measure_rss([str(binary), "0"], client, agent.pid, args)
                return
            python = PY312 if Path(PY312).exists() else sys.executable
            (tmp / "work.py").write_text(WORK_PY)
            apps = {
                "C": ([str(binary), "800"], [str(binary), "0"]),
                f"Python ({Path(python).name}, py-spy)": (
                    [python, str(tmp / "work.py"), "30"],
                    [python, str(tmp / "work.py"), "0"],
                ),
            }
            if args.busy:
                print(f"{args.busy} busy loops beside the app throughout")
            for name, (work, soak) in apps.items():
                if args.only and not name.lower().startswith(args.only):
                    continue
                measure(name, work, soak, client, agent.pid, args)
    finally:
        for b in busy:
            b.kill()
            b.wait()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


def _r(xs: list[float]) -> list[float]:
    return [round(x, 3) for x in xs]


def measure(
    name: str,
    work: list[str],
    soak: list[str],
    client: httpx.Client,
    agent_pid: int,
    args: argparse.Namespace,
) -> None:
    print(f"\n{name} app: flight recorder at 19 Hz, {args.pairs} alternating pairs (medians)")
    if args.pairs:
        measure_pairs(work, client, args)
    soak_run(soak, client, agent_pid, args)


def measure_pairs(work: list[str], client: httpx.Client, args: argparse.Namespace) -> None:
    base_w: list[float] = []
    base_c: list[float] = []
    rec_w: list[float] = []
    rec_c: list[float] = []
    for i in range(args.pairs):
        for recorded in (i % 2 == 1, i % 2 == 0):  # alternate which arm goes first
            w, c = run_once(work, client, recorded=recorded)
            (rec_w if recorded else base_w).append(w)
            (rec_c if recorded else base_c).append(c)
    bw, rw = statistics.median(base_w), statistics.median(rec_w)
    bc, rc = statistics.median(base_c), statistics.median(rec_c)
    print(f"  unrecorded: wall {bw:.3f} s  cpu {bc:.3f} s   cpu runs {_r(base_c)}")
    print(f"  recorded:   wall {rw:.3f} s  cpu {rc:.3f} s   cpu runs {_r(rec_c)}")
    verdict = "OK" if rc / bc <= 1.01 else "ABOVE TARGET"
    print(
        f"  ratio recorded/unrecorded: cpu {rc / bc:.4f}x  wall {rw / bw:.4f}x  "
        f"(target cpu <= 1.01x: {verdict})"
    )


def soak_run(
    soak: list[str], client: httpx.Client, agent_pid: int, args: argparse.Namespace
) -> None:
    """The agent's own cost while recording a busy app, and the ring's lag."""
    app = subprocess.Popen(soak, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    lags: list[float] = []
    try:
        assert app.stdin is not None
        app.stdin.write(b"g")
        app.stdin.flush()
        rss0, cpu0 = rss_mb(agent_pid), proc_cpu_s(agent_pid, children=True)
        r = client.post("/recorder", json={"pid": app.pid})
        assert r.status_code == 201, r.text
        t0 = time.monotonic()
        time.sleep(10)  # warmed up (bpftrace parses BTF and loads kernel symbols) first
        while time.monotonic() - t0 < args.soak:
            lag = client.get("/recorder").json().get("lag_s")
            if lag is not None:
                lags.append(float(lag))
            time.sleep(0.25)
        status = client.get("/recorder").json()
        elapsed = time.monotonic() - t0
        rss1 = rss_mb(agent_pid)
        client.delete("/recorder")
        time.sleep(1)
        cpu = proc_cpu_s(agent_pid, children=True) - cpu0
    finally:
        app.kill()
        app.wait()
    per_hour = 3600 / elapsed
    py = status.get("python") or {}
    print(f"  soak: {elapsed:.0f} s of recording a busy app ({status['samples']} samples kept)")
    if py:
        for pid, p in py.items():
            print(
                f"  python pid {pid}: {p['profiler']} {p['state']}, {p['seconds']} seconds "
                f"recorded, {p['failures']} failed runs, {p.get('late', 0)} late (not attached "
                "by their second's end: the sampler's stacks kept)"
            )
    print(
        f"  agent CPU with its children: {cpu:.2f} s = {100 * cpu / elapsed:.2f}% of a core "
        f"({cpu * per_hour:.0f} s per hour)"
    )
    print(
        f"  ring: {status['bytes']:,} bytes for {status['buckets']} s "
        f"= {status['bytes'] * 3600 / max(status['buckets'], 1) / 1e6:.2f} MB per hour of window "
        f"(bounded by max_bytes, default 16 MiB); late samples {status['late_samples']}"
    )
    if lags:
        lags.sort()
        verdict = "OK" if lags[-1] < 2.0 else "ABOVE TARGET"
        print(
            f"  lag behind real time: median {statistics.median(lags):.2f} s, "
            f"p95 {lags[int(0.95 * (len(lags) - 1))]:.2f} s, max {lags[-1]:.2f} s "
            f"({len(lags)} polls; target max < 2 s: {verdict})"
        )
    print(
        f"  seconds arrived after they ended, at most: bpftrace "
        f"{status.get('sampler_delay_max_s')} s, py-spy {status.get('python_delay_max_s')} s"
    )
    print(f"  agent RSS: {rss0:.1f} MB before, {rss1:.1f} MB after (+{rss1 - rss0:.1f} MB)")


def _soak_cpu(
    client: httpx.Client, agent_pid: int, pids: list[int], *, rss: bool, seconds: float
) -> tuple[float, int]:
    """The agent process's own CPU (the RSS reads are its; bpftrace's is the same either
    way) over ``seconds`` of recording ``pids``,
    once the ring holds its first seconds (bpftrace compiles a program filtering 51
    pids for several seconds on a loaded machine: not the recording's cost), and the
    processes with an RSS series."""
    r = client.post("/recorder", json={"pids": pids, "rss": rss})
    assert r.status_code == 201, r.text
    try:
        deadline = time.monotonic() + 120
        while client.get("/recorder").json().get("buckets", 0) < 3:
            assert time.monotonic() < deadline, "the recorder delivered nothing in 120 s"
            time.sleep(0.5)
        cpu0, t0 = proc_cpu_s(agent_pid), time.monotonic()
        time.sleep(seconds)
        cpu = proc_cpu_s(agent_pid) - cpu0
        elapsed = time.monotonic() - t0
        status = client.get("/recorder").json()
    finally:
        client.delete("/recorder")
        time.sleep(1)
    return cpu / elapsed, len(status.get("rss") or [])


def measure_rss(
    busy: list[str], client: httpx.Client, agent_pid: int, args: argparse.Namespace
) -> None:
    sys.path.insert(0, str(REPO))
    from agent import procfs

    sleepers = [subprocess.Popen(["sleep", "3600"]) for _ in range(args.sleepers)]
    app = subprocess.Popen(busy, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        assert app.stdin is not None
        app.stdin.write(b"g")
        app.stdin.flush()
        pids = [app.pid, *(p.pid for p in sleepers)]
        # The read itself, as the recorder does it each second for each process: a
        # pread on each process's statm kept open (procfs.RssReader); open/read/close
        # (procfs.rss_bytes) printed beside it.
        rounds = 200
        reader = procfs.RssReader()
        for pid in pids:
            reader.read(pid)
        t0 = time.perf_counter()
        for _ in range(rounds):
            for pid in pids:
                reader.read(pid)
        per_read = (time.perf_counter() - t0) / (rounds * len(pids))
        reader.close()
        t0 = time.perf_counter()
        for _ in range(rounds):
            for pid in pids:
                procfs.rss_bytes(pid)
        per_open = (time.perf_counter() - t0) / (rounds * len(pids))
        print(
            f"\nRSS sampling: {len(pids)} processes recorded (1 busy C app, {args.sleepers} idle)"
        )
        print(
            f"  one statm read (kept open): {per_read * 1e6:.1f} us (open/read/close: "
            f"{per_open * 1e6:.1f} us); per second for {len(pids)} processes: "
            f"{per_read * len(pids) * 1e3:.2f} ms = {100 * per_read * len(pids):.3f}% of a core"
        )
        off: list[float] = []
        on: list[float] = []
        entries: list[int] = []
        for i in range(args.pairs):
            for rss in (i % 2 == 1, i % 2 == 0):  # alternate which arm goes first
                cpu, n = _soak_cpu(client, agent_pid, pids, rss=rss, seconds=args.soak)
                (on if rss else off).append(cpu)
                if rss:
                    entries.append(n)
        mo, mn = statistics.median(off), statistics.median(on)
        for label, med, runs in (("off:", mo, off), ("on: ", mn, on)):
            pct = _r([100 * x for x in runs])
            print(f"  recorder, rss {label} agent {100 * med:.2f}% of a core   runs {pct}")
        print(f"  processes with an RSS series, each rss-on run: {entries}")
        # The read's own cost against the recorder's: the A/B ratio is within the noise
        # of a loaded machine; the direct figure is what RSS sampling adds for sure.
        added = per_read * len(pids)
        verdict = "OK" if added <= 0.01 * mo else "ABOVE TARGET"
        print(
            f"  ratio on/off: {mn / mo:.3f}x (A/B, {args.pairs} pairs of {args.soak:g} s); "
            f"the reads alone add {100 * added / mo:.2f}% to the recorder's CPU "
            f"(target <= 1%: {verdict})"
        )
    finally:
        app.kill()
        app.wait()
        for p in sleepers:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
