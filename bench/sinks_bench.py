"""Continuous profiling into Pyroscope: the push path's CPU, memory and bytes per pod at
the default 15 s interval, and the spool through a store outage.

One command: ``.venv/bin/python bench/sinks_bench.py [--soak S] [--outage S]``.

A real agent (``python -m agent`` on this machine, its own data directory), a real
Grafana Pyroscope on loopback (``scripts/stores build`` makes it), and two busy apps
(a C loop and a Python loop: two process groups, so two profiles per interval).
Same run, same apps, the agent's own process measured (CPU from /proc, RSS):

- baseline: the flight recorder at 19 Hz on both apps, no push, for ``--soak`` s;
- push: the same with ``"push": true`` (one pprof per process group every 15 s,
  spooled, sent to Pyroscope) for ``--soak`` s. The difference is the push path's
  cost; the ratio is push/baseline. Bytes sent come from the agent's /metrics.
- outage: Pyroscope stopped for ``--outage`` s, then started again: the spool's
  bytes and items over time, the sink's state, the drops (none expected: the
  spool's bound is 256 MiB), and how long the backlog takes to drain.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import build_work, proc_cpu_s, rss_mb, running_agent  # noqa: E402
from tests.stores import Pyroscope, store_binary  # noqa: E402

PY_LOOP = "import sys\nsys.stdin.read(1)\nwhile True:\n    sum(i * i for i in range(10000))\n"


def metric(client: httpx.Client, name: str, label: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name) and label in line:
            return float(line.split()[-1])
    return 0.0


def sinks(client: httpx.Client) -> dict[str, Any]:
    status: dict[str, Any] = client.get("/capabilities").json()["sinks"]["pyroscope"]
    return status


def phase(
    client: httpx.Client, agent_pid: int, pids: list[int], *, push: bool, soak: float
) -> dict[str, float]:
    sent0 = metric(client, "tracecar_agent_sink_sent_bytes_total", 'sink="pyroscope"')
    n0 = metric(client, "tracecar_agent_sink_sent_total", 'sink="pyroscope"')
    r = client.post("/recorder", json={"pids": pids, "push": push})
    assert r.status_code == 201, r.text
    time.sleep(3)  # bpftrace attached
    cpu0, t0 = proc_cpu_s(agent_pid), time.monotonic()
    time.sleep(soak)
    elapsed = time.monotonic() - t0
    cpu = proc_cpu_s(agent_pid) - cpu0
    rss = rss_mb(agent_pid)
    status = client.get("/recorder").json()
    client.delete("/recorder")
    time.sleep(2)
    return {
        "elapsed": elapsed,
        "cpu": cpu,
        "rss": rss,
        "bytes": metric(client, "tracecar_agent_sink_sent_bytes_total", 'sink="pyroscope"') - sent0,
        "sent": metric(client, "tracecar_agent_sink_sent_total", 'sink="pyroscope"') - n0,
        "intervals": float((status.get("push") or {}).get("intervals_pushed", 0)),
    }


def outage(
    client: httpx.Client, agent_pid: int, pids: list[int], store: Pyroscope, seconds: float
) -> None:
    r = client.post("/recorder", json={"pids": pids, "push": True})
    assert r.status_code == 201, r.text
    time.sleep(20)  # one interval delivered first
    print(f"\n  outage: Pyroscope stopped for {seconds:.0f} s (pushes every 15 s go on)")
    store.stop()
    cpu0, t0 = proc_cpu_s(agent_pid), time.monotonic()
    peak = 0
    while time.monotonic() - t0 < seconds:
        time.sleep(5)
        s = sinks(client)
        rec = client.get("/recorder").json()
        peak = max(peak, s["queued_bytes"])
        lag = time.time() - (rec["window"] or {"end": time.time()})["end"]
        print(
            f"    t+{time.monotonic() - t0:3.0f} s  state {s['state']:<8}  queued "
            f"{s['queued_items']:3d} items {s['queued_bytes']:>7,} bytes  dropped {s['dropped']}"
            f"  (intervals pushed {rec['push']['intervals_pushed']}, recorder {lag:.0f} s behind)"
        )
    cpu = proc_cpu_s(agent_pid) - cpu0
    down = time.monotonic() - t0
    store.start(timeout=180)
    t1 = time.monotonic()
    while sinks(client)["queued_items"]:
        time.sleep(0.2)
    drained = time.monotonic() - t1
    s = sinks(client)
    client.delete("/recorder")
    print(f"  Pyroscope ready again {t1 - t0 - down:.0f} s after the restart began")
    print(
        f"  backlog drained {drained:.1f} s after it was ready; state {s['state']}, "
        f"dropped {s['dropped']}, peak spool {peak:,} bytes"
    )
    print(f"  agent CPU during the outage: {100 * cpu / down:.2f}% of a core (retries included)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--soak", type=float, default=120.0)
    ap.add_argument("--outage", type=float, default=60.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sinks-bench-", dir="/var/tmp"))
    binary = build_work(tmp)
    store = Pyroscope(store_binary("pyroscope"), tmp / "pyroscope")
    store.start(timeout=180)
    apps = [
        subprocess.Popen([str(binary), "0"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-c", PY_LOOP], stdin=subprocess.PIPE),
    ]
    settings = {
        "TRACECAR_AGENT_PYROSCOPE_URL": store.url,
        "TRACECAR_AGENT_SERVICE_NAME": "bench/sinks",
    }
    try:
        for a in apps:
            assert a.stdin is not None
            a.stdin.write(b"g")
            a.stdin.flush()
        with running_agent(tmp / "data", token=None, env=settings, stop_wait=60) as (
            agent,
            client,
        ):
            pids = [a.pid for a in apps]
            print("continuous profiling at 19 Hz, pushed every 15 s; two busy apps (C, Python)")
            base = phase(client, agent.pid, pids, push=False, soak=args.soak)
            push = phase(client, agent.pid, pids, push=True, soak=args.soak)
            report(base, push)
            outage(client, agent.pid, pids, store, args.outage)
    finally:
        for a in apps:
            a.kill()
            a.wait()
        store.stop()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


def report(base: dict[str, float], push: dict[str, float]) -> None:
    per_hour = 3600 / push["elapsed"]
    b_cpu = base["cpu"] / base["elapsed"]
    p_cpu = push["cpu"] / push["elapsed"]
    extra = p_cpu - b_cpu
    print(
        f"  baseline (recorder, no push): agent CPU {100 * b_cpu:.2f}% of a core, "
        f"RSS {base['rss']:.1f} MB"
    )
    print(
        f"  push every 15 s:              agent CPU {100 * p_cpu:.2f}% of a core, "
        f"RSS {push['rss']:.1f} MB; {push['intervals']:.0f} intervals, {push['sent']:.0f} "
        "profiles sent"
    )
    print(
        f"  ratio push/baseline: cpu {p_cpu / max(b_cpu, 1e-9):.3f}x, "
        f"rss {push['rss'] / max(base['rss'], 1e-9):.3f}x"
    )
    print(
        f"  the push path: {100 * extra:+.3f}% of a core = {extra * 3600:+.1f} CPU s per pod "
        f"per hour; RSS {push['rss'] - base['rss']:+.1f} MB"
    )
    print(
        f"  bytes sent: {push['bytes'] / max(push['sent'], 1):,.0f} per profile, "
        f"{push['bytes'] * per_hour / 1e6:.2f} MB per pod per hour (gzipped pprof, 2 groups)"
    )


if __name__ == "__main__":
    main()
