"""Benchmark of the admission webhook: ``.venv/bin/python bench/webhook_bench.py``.

Measures, over TLS with keep-alive, with ``wrk`` (a Lua script posts the body):

- ``/mutate`` latency (p50, p99) and throughput at concurrency 1, 16 and 64, against a
  floor measured in the same run on the same server process: ``/floor`` (enabled by
  ``TRACECAR_WEBHOOK_BENCH_FLOOR``) reads the body and returns a fixed AdmissionReview
  of a real one's size (the agent's patch for a one-container pod; sizes printed).
  Rounds alternate floor and mutate so drift on a shared machine hits both alike.
  Targets: p99 within 1.5x the floor, throughput at least 70 % of it.
- Big pods answered one at a time (1,500 env vars; a 64 KB pod spec): target < 50 ms.
  For comparison, the time ``jsonpatch.make_patch`` (diffing, Istio's old approach)
  would take on the same pod is measured in-process.
- The webhook's resident memory after the runs: target < 100 MB.

Runtime: about 1.5 minutes. ``--quick`` shortens every run (a smoke test).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jsonpatch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from certs import ensure_local_certs  # noqa: E402
from webhook.inject import plan_injection  # noqa: E402
from webhook.settings import Settings  # noqa: E402

LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH {\"p50_us\": %d, \"p99_us\": %d, \"requests\": %d, \"duration_us\": %d, " ..
    "\"socket_errors\": %d, \"non2xx\": %d}\n",
    latency:percentile(50), latency:percentile(99), summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""

POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "generateName": "hello-7d9f8c-",
        "namespace": "shop",
        "labels": {"app": "hello", "tier": "backend", "profiling": "enabled"},
    },
    "spec": {
        "containers": [
            {
                "name": "hello",
                "image": "registry.example/hello-go:1.0",
                "ports": [{"name": "http", "containerPort": 80}],
                "env": [{"name": "MODE", "value": "prod"}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 80}},
                "volumeMounts": [{"name": "config", "mountPath": "/etc/hello"}],
            }
        ],
        "volumes": [{"name": "config", "configMap": {"name": "hello"}}],
        "serviceAccountName": "hello",
    },
}


def review(pod: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": str(uuid.uuid4()),
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop",
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": pod,
                "dryRun": False,
            },
        }
    ).encode()


def env_pod(n: int) -> dict[str, Any]:
    pod = copy.deepcopy(POD)
    pod["spec"]["containers"][0]["env"] = [
        {"name": f"SETTING_{i}", "value": f"value-{i}-" + "x" * 16} for i in range(n)
    ]
    return pod


def big_spec_pod(target_bytes: int) -> dict[str, Any]:
    """A pod whose spec is about `target_bytes` of JSON: many containers, ports, env, mounts."""
    pod = copy.deepcopy(POD)
    template = pod["spec"]["containers"][0]
    containers: list[dict[str, Any]] = []
    i = 0
    while len(json.dumps({"containers": containers})) < target_bytes:
        c = copy.deepcopy(template)
        c["name"] = f"worker-{i}"
        c["ports"] = [{"name": f"p{i}", "containerPort": 10000 + i}]
        c["env"] = [{"name": f"W{i}_{j}", "value": "v" * 24} for j in range(20)]
        c["args"] = [f"--shard={i}", "--verbose"]
        containers.append(c)
        i += 1
    pod["spec"]["containers"] = containers
    return pod


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wrk(
    url: str, body: Path, script: Path, *, connections: int, seconds: float
) -> dict[str, float]:
    threads = 1 if connections == 1 else 2
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        env={**os.environ, "BENCH_BODY": str(body)},
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}"
        )
    line = next(x for x in out.stdout.splitlines() if x.startswith("BENCH "))
    r = json.loads(line[len("BENCH ") :])
    return {
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "errors": r["socket_errors"] + r["non2xx"],
    }


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used (robust to other load on the box)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


JSON = {"content-type": "application/json"}


def one_by_one(client: httpx.Client, body: bytes, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.post("/mutate", content=body, headers=JSON)
        times.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200 and "patch" in r.json()["response"], r.text[:300]
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    args = ap.parse_args()
    seconds = 1.0 if args.quick else 5.0
    rounds = 1 if args.quick else 2
    if shutil.which("wrk") is None:
        print("wrk is missing: run scripts/setup", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="webhook-bench-") as tmp_s:
        tmp = Path(tmp_s)
        certs = ensure_local_certs(
            tmp / "certs", dns_names=["localhost"], ip_addresses=["127.0.0.1"]
        )
        script = tmp / "post.lua"
        script.write_text(LUA)
        bodies = {
            "pod": review(POD),
            "env1500": review(env_pod(1500)),
            "spec64k": review(big_spec_pod(64 * 1024)),
        }
        for name, data in bodies.items():
            (tmp / f"{name}.json").write_bytes(data)
        port = free_port()
        env = {
            **os.environ,
            "TRACECAR_WEBHOOK_CERT_FILE": str(certs.cert),
            "TRACECAR_WEBHOOK_KEY_FILE": str(certs.key),
            "TRACECAR_WEBHOOK_HOST": "127.0.0.1",
            "TRACECAR_WEBHOOK_PORT": str(port),
            "TRACECAR_WEBHOOK_BENCH_FLOOR": "true",
        }
        log = (tmp / "webhook.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "webhook"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
        base = f"https://127.0.0.1:{port}"
        try:
            verify = ssl.create_default_context(cafile=str(certs.ca_cert))
            with httpx.Client(
                base_url=f"https://localhost:{port}", verify=verify, timeout=10
            ) as client:
                deadline = time.monotonic() + 20
                while True:
                    try:
                        if client.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        if proc.poll() is not None or time.monotonic() > deadline:
                            print((tmp / "webhook.log").read_text(), file=sys.stderr)
                            return 1
                    time.sleep(0.1)
                print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
                sizes = {
                    path: len(client.post(path, content=bodies["pod"], headers=JSON).content)
                    for path in ("/floor", "/mutate")
                }
                print(
                    f"webhook pid {proc.pid}, RSS {rss_mb(proc.pid)[0]:.1f} MB idle; "
                    f"body {len(bodies['pod'])} B, answer {sizes['/mutate']} B "
                    f"(floor's {sizes['/floor']} B); "
                    f"{rounds} round(s) x {seconds:g} s per point, floor and mutate alternating\n"
                )

                # Warm-up of both paths (TLS sessions, first-request costs).
                for path in ("/floor", "/mutate"):
                    wrk(base + path, tmp / "pod.json", script, connections=4, seconds=1)

                print(
                    f"{'conc':>4} {'':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'cpu us':>8}   "
                    f"{'p99 ratio':>9} {'rps ratio':>9} {'cpu ratio':>9}"
                )
                verdicts = []
                for conc in (1, 16, 64):
                    runs: dict[str, list[dict[str, float]]] = {"floor": [], "mutate": []}
                    for _ in range(rounds):
                        for path in ("floor", "mutate"):
                            before = cpu_s(proc.pid)
                            r = wrk(
                                f"{base}/{path}",
                                tmp / "pod.json",
                                script,
                                connections=conc,
                                seconds=seconds,
                            )
                            requests = r["rps"] * seconds
                            r["cpu_us"] = (cpu_s(proc.pid) - before) * 1e6 / max(requests, 1)
                            runs[path].append(r)
                    agg = {
                        p: {
                            k: statistics.fmean(r[k] for r in rs)
                            for k in ("p50_ms", "p99_ms", "rps", "cpu_us")
                        }
                        | {"errors": sum(r["errors"] for r in rs)}
                        for p, rs in runs.items()
                    }
                    f, m = agg["floor"], agg["mutate"]
                    p99_ratio = m["p99_ms"] / f["p99_ms"]
                    rps_ratio = m["rps"] / f["rps"]
                    cpu_ratio = f["cpu_us"] / m["cpu_us"]
                    for p in ("floor", "mutate"):
                        a = agg[p]
                        extra = (
                            f"   {p99_ratio:9.2f} {rps_ratio:9.2f} {cpu_ratio:9.2f}"
                            if p == "mutate"
                            else ""
                        )
                        print(
                            f"{conc:>4} {p:>7} {a['p50_ms']:8.2f} {a['p99_ms']:8.2f} "
                            f"{a['rps']:8.0f} {a['cpu_us']:8.0f}{extra}"
                        )
                    ok = (
                        p99_ratio <= 1.5
                        and rps_ratio >= 0.7
                        and m["errors"] == 0
                        and f["errors"] == 0
                    )
                    verdicts.append(ok)
                    print(
                        f"     -> p99 {p99_ratio:.2f}x floor (target <= 1.5), throughput "
                        f"{rps_ratio:.0%} of floor (target >= 70%), errors {int(m['errors'])}: "
                        f"{'OK' if ok else 'MISS'}; server CPU per review: floor/mutate "
                        f"{cpu_ratio:.0%} (the throughput a dedicated core would give)"
                    )

                print(f"\nRSS after the load runs: {rss_mb(proc.pid)[0]:.1f} MB")
                print("\nbig pods, one request at a time over keep-alive (client-side ms):")
                settings = Settings()
                for name, pod in (("env1500", env_pod(1500)), ("spec64k", big_spec_pod(64 * 1024))):
                    times = one_by_one(client, bodies[name], 10 if args.quick else 40)
                    pod_bytes = len(json.dumps(pod["spec"]))
                    injected = plan_injection(pod, settings=settings).pod
                    t = time.perf_counter()
                    jsonpatch.make_patch(pod, injected)
                    diff_ms = (time.perf_counter() - t) * 1000
                    p50 = statistics.median(times)
                    worst = max(times)
                    verdicts.append(worst < 50)
                    print(
                        f"  {name:8} spec {pod_bytes / 1024:5.1f} KB: p50 {p50:6.2f} ms, "
                        f"max {worst:6.2f} ms "
                        f"(target < 50: {'OK' if worst < 50 else 'MISS'}); "
                        f"jsonpatch.make_patch alone would take {diff_ms:.1f} ms"
                    )

                rss, peak = rss_mb(proc.pid)
                verdicts.append(peak < 100)
                print(
                    f"\nwebhook memory: RSS {rss:.1f} MB, peak {peak:.1f} MB "
                    f"(target < 100: {'OK' if peak < 100 else 'MISS'})"
                )
                print(f"load average at end: {os.getloadavg()[0]:.2f}")
                print(f"\nall targets met: {all(verdicts)}")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
