"""N simulated agents pushing continuous profiles to one real Pyroscope: does it keep up?

Each simulated agent is an asyncio task in this process running the agent's own push
path: every interval it encodes one interval of a realistic profile with
``tracecar_formats.pprof.to_pprof`` (19 Hz x interval samples over a few hundred
distinct stacks, real ``time_nanos``/``duration_nanos``), spools it in its own
:class:`agent.sinks._sink.Sink` (the on-disk spool, the delivery task, the backoff)
whose sender is :class:`agent.sinks._pyroscope.PyroscopeSender`, labelled as a pod
of a 3-service fleet. Pyroscope v1.21.1 runs as a local process on loopback (the
binary ``scripts/stores build pyroscope`` caches).

Measured: Pyroscope's CPU and RSS idle (the baseline, same run) and under the load;
this process's CPU and RSS (all agents' push paths) per agent; bytes on the wire per
pod per hour; every agent's sent/dropped/queued at the end; and whether Pyroscope
holds every sample sent (a merged query's total equals what was sent).

    scripts/bench fleet_bench            # 120 agents, 15 s interval, 5 min
    .venv/bin/python bench/fleet_bench.py --agents 200 --minutes 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.sinks._labels import profile_labels  # noqa: E402
from agent.sinks._pyroscope import PyroscopeSender  # noqa: E402
from agent.sinks._sink import Sink  # noqa: E402
from tracecar_formats.pprof import to_pprof  # noqa: E402

CPU_TYPE = "process_cpu:cpu:nanoseconds:cpu:nanoseconds"
HZ = 19
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pyroscope_binary() -> Path:
    out = subprocess.run(
        [str(ROOT / "scripts" / "stores"), "path", "pyroscope"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if out.returncode != 0:
        sys.exit("no Pyroscope binary: run `scripts/stores build pyroscope` first")
    return Path(out.stdout.strip())


def start_pyroscope(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    http, grpc, member = free_port(), free_port(), free_port()
    addr = "127.0.0.1"
    rings = [
        "-distributor.ring.instance-addr",
        "-ingester.lifecycler.addr",
        "-compactor.ring.instance-addr",
        "-overrides-exporter.ring.instance-addr",
        "-query-frontend.instance-addr",
        "-query-scheduler.ring.instance-addr",
        "-store-gateway.sharding-ring.instance-addr",
    ]
    argv = [
        str(pyroscope_binary()),
        "-target=all",
        f"-server.http-listen-address={addr}",
        f"-server.http-listen-port={http}",
        f"-server.grpc-listen-address={addr}",
        f"-server.grpc-listen-port={grpc}",
        f"-memberlist.bind-addr={addr}",
        f"-memberlist.bind-port={member}",
        f"-memberlist.advertise-addr={addr}",
        f"-memberlist.advertise-port={member}",
        *(f"{flag}={addr}" for flag in rings),
        "-storage.backend=filesystem",
        f"-storage.filesystem.dir={workdir / 'blocks'}",
        f"-pyroscopedb.data-path={workdir / 'data'}",
        "-usage-stats.enabled=false",
        "-self-profiling.disable-push=true",
        "-tracing.enabled=false",
    ]
    log = (workdir / "pyroscope.log").open("wb")
    proc = subprocess.Popen(argv, cwd=workdir, stdout=log, stderr=log)
    url = f"http://{addr}:{http}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"Pyroscope exited {proc.returncode}; log: {workdir / 'pyroscope.log'}")
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    sys.exit("Pyroscope not ready after 120 s")


def proc_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / TICK
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return cpu, rss


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_stacks(rng: random.Random, service: int) -> list[str]:
    """A service's distinct stacks: a web app's depth and breadth (~300 stacks, 8-30 deep)."""
    frames = [f"svc{service}.mod{m}.func{f}" for m in range(40) for f in range(8)]
    stacks = []
    for _ in range(300):
        depth = rng.randint(8, 30)
        stacks.append(";".join(["python", "main", *rng.sample(frames, depth)]))
    return stacks


class SimAgent:
    def __init__(self, i: int, url: str, spool: Path, stacks: list[str], interval: float) -> None:
        self.i = i
        self.service = i % 3
        self.stacks = stacks
        self.interval = interval
        self.rng = random.Random(i)
        self.bytes = 0
        self.samples = 0
        self.profiles = 0
        self.dropped = 0
        self.sender = PyroscopeSender(
            url, tenant=None, user_file=None, password_file=None, token_file=None, timeout_s=30
        )
        self.sink = Sink(
            self.sender,
            spool,
            max_bytes=64 << 20,
            max_age_s=3600,
            on_drop=self._drop,
            on_sent=lambda _id, _n: None,
        )
        self.base = {
            "service_name": f"bench/svc{self.service}",
            "namespace": "bench",
            "pod": f"svc{self.service}-{i:04d}",
            "workload": f"deployment/svc{self.service}",
            "node": f"node-{i % 10}",
        }

    def _drop(self, _id: str, _reason: object) -> None:
        self.dropped += 1

    def interval_stacks(self) -> dict[str, int]:
        n = int(HZ * self.interval)
        out: dict[str, int] = {}
        # Zipf-like: a few hot stacks, a long tail, as real CPU profiles are.
        for _ in range(n):
            k = min(int(self.rng.paretovariate(1.2)) - 1, len(self.stacks) - 1)
            stack = self.stacks[k]
            out[stack] = out.get(stack, 0) + 1
        return out

    async def run(self, until: float, start_at: float) -> None:
        await self.sink.start()
        t = start_at
        while t + self.interval <= until:
            await asyncio.sleep(max(t + self.interval - time.time(), 0))
            stacks = self.interval_stacks()
            payload = await asyncio.to_thread(
                to_pprof,
                stacks,
                period_ns=round(1e9 / HZ),
                duration_ns=round(self.interval * 1e9),
                time_ns=round(t * 1e9),
            )
            labels = profile_labels(
                self.base, kind="cpu", source="continuous", runtime="python", container="app"
            )
            await self.sink.put_bytes(
                payload, {"labels": labels, "from": t, "to": t + self.interval}
            )
            self.bytes += len(payload)
            self.samples += sum(stacks.values())
            self.profiles += 1
            t += self.interval

    async def finish(self) -> dict[str, Any]:
        await self.sink.flush_and_stop(60)
        status = self.sink.status()
        await self.sender.close()
        return status


def query_total(url: str, start_s: float, end_s: float, selector: str) -> int:
    body = json.dumps(
        {
            "profileTypeID": CPU_TYPE,
            "labelSelector": selector,
            "start": int(start_s * 1000),
            "end": int(end_s * 1000),
        }
    ).encode()
    req = urllib.request.Request(
        url + "/querier.v1.QuerierService/SelectMergeStacktraces",
        data=body,
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        doc = json.load(r)
    return int((doc.get("flamegraph") or {}).get("total") or 0)


async def drive(agents: list[SimAgent], seconds: float) -> list[dict[str, Any]]:
    start = float(int(time.time()) + 1)
    until = start + seconds
    # Spread the agents over the interval, as pods started at different times are.
    tasks = [
        asyncio.create_task(a.run(until, start + (a.i * a.interval / len(agents)) - a.interval))
        for a in agents
    ]
    await asyncio.gather(*tasks)
    return list(await asyncio.gather(*(a.finish() for a in agents)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=120)
    ap.add_argument("--interval", type=float, default=15.0)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--baseline-s", type=float, default=30.0)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tracecar-fleet-bench-"))
    proc, url = start_pyroscope(work)
    try:
        time.sleep(5)  # past start-up's own burst
        c0, _ = proc_usage(proc.pid)
        time.sleep(args.baseline_s)
        c1, idle_rss = proc_usage(proc.pid)
        idle_cpu = (c1 - c0) / args.baseline_s

        rngs = random.Random(0)
        stacks = [make_stacks(rngs, s) for s in range(3)]
        agents = [
            SimAgent(i, url, work / "spool" / str(i), stacks[i % 3], args.interval)
            for i in range(args.agents)
        ]
        seconds = args.minutes * 60
        p0, _ = proc_usage(proc.pid)
        s0 = self_cpu()
        rss_before = proc_usage(os.getpid())[1]
        t0 = time.time()
        peak_store_rss = 0

        async def sample_rss(stop: asyncio.Event) -> None:
            nonlocal peak_store_rss
            while not stop.is_set():
                peak_store_rss = max(peak_store_rss, proc_usage(proc.pid)[1])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 5)

        async def run_all() -> list[dict[str, Any]]:
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_rss(stop))
            out = await drive(agents, seconds)
            stop.set()
            await sampler
            return out

        statuses = asyncio.run(run_all())
        wall = time.time() - t0
        p1, _ = proc_usage(proc.pid)
        s1 = self_cpu()
        rss_after = proc_usage(os.getpid())[1]

        sent = sum(int(s["sent"]) for s in statuses)
        dropped = sum(int(s["dropped"]) for s in statuses) + sum(a.dropped for a in agents)
        queued = sum(int(s["queued_items"]) for s in statuses)
        profiles = sum(a.profiles for a in agents)
        samples = sum(a.samples for a in agents)
        payload = sum(a.bytes for a in agents)
        time.sleep(3)
        total_ns = query_total(url, t0 - 3 * args.interval, time.time() + 60, '{namespace="bench"}')
        expected_ns = samples * round(1e9 / HZ)

        store_cpu = (p1 - p0) / wall
        push_cpu = (s1 - s0) / wall
        n = args.agents
        per_pod_hour = payload / n / (wall / 3600)
        print(
            f"fleet bench: {n} agents, interval {args.interval:g}s, {wall:.0f}s, Pyroscope v1.21.1"
        )
        print(
            f"  profiles pushed {profiles}, sent {sent}, dropped {dropped}, queued at end {queued}"
        )
        print(
            f"  samples in Pyroscope {total_ns / round(1e9 / HZ):.0f} of {samples} sent "
            f"({total_ns / expected_ns if expected_ns else 0:.4f}x)"
        )
        print(
            f"  Pyroscope CPU: idle {idle_cpu * 100:.1f}% of a core (baseline), loaded "
            f"{store_cpu * 100:.1f}% ({store_cpu / idle_cpu if idle_cpu else 0:.1f}x idle); "
            f"{(store_cpu - idle_cpu) * 1000 / n:.2f} millicores per agent"
        )
        print(
            f"  Pyroscope RSS: idle {idle_rss / 2**20:.0f} MiB, "
            f"peak {peak_store_rss / 2**20:.0f} MiB "
            f"({(peak_store_rss - idle_rss) / n / 2**20:.2f} MiB per agent)"
        )
        print(
            f"  agents (push path, one process): "
            f"CPU {push_cpu * 1000 / n:.2f} millicores per agent, "
            f"RSS +{(rss_after - rss_before) / n / 1024:.0f} KiB per agent"
        )
        print(
            f"  bytes per pod: {payload / profiles / 1024:.1f} KiB per profile, "
            f"{per_pod_hour / 2**20:.2f} MiB per hour (pprof, gzipped)"
        )
        ok = dropped == 0 and queued == 0 and sent == profiles and total_ns == expected_ns
        print(f"  keeps up: {'yes' if ok else 'NO'}")
        if not ok:
            sys.exit(1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
