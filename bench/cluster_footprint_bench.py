"""What the sidecar costs on a real cluster (issue 23), one command:

    .venv/bin/python bench/cluster_footprint_bench.py [--pods 10] [--idle-s 600] [--skip-peaks]

It owns the dev cluster for its run: `scripts/cluster up`, the images built and
loaded (tag 0.1.0, what deploy/ names), `kubectl apply -k deploy/`, and
`scripts/cluster down` at the end (`--keep` keeps it). Not part of `scripts/bench`'s
default set (it needs root and brings a cluster up): run it by name.

1. **Start delay** of the app in a labelled pod (native sidecar, images already on the
   node): the same one-container pod created unlabelled, labelled (full agent) and
   labelled with `tracecar.dev/image-variant: core`, one at a time and rotating, --pods
   of each: from `kubectl create` returning to the app container's `started: true`
   as a watch sees it. Baseline: the unlabelled pod. Target: the median adds <= 1 s.
2. **Idle**: a labelled pod left alone for --idle-s seconds after it settled: the
   agent process's RSS (target <= 60 MB), the container's working set with
   lttng-sessiond (target <= 75 MB), and the CPU seconds the container used over the
   window (target: ~0; the kubelet's exec liveness probe every 10 s is in it).
3. **Peaks**: the heaviest default of each capability (tests/cluster/footprint.py) in
   a labelled pod at the webhook's default limits: the container's peak memory and
   CPU seconds, and whether the CFS quota throttled it.
4. **Image sizes** (`scripts/images sizes`): uncompressed, and the gzip bytes a node
   pulls the first time.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devcluster import Layout  # noqa: E402
from tests.cluster import footprint as F  # noqa: E402
from tests.cluster import kube as K  # noqa: E402


def sh(*argv: str, timeout: float = 1800, env: dict[str, str] | None = None) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{res.stderr[-3000:]}{res.stdout[-2000:]}")
    return res.stdout


def setup(images: bool) -> K.Kube:
    lay = Layout.for_repo(REPO)
    sh(str(REPO / "scripts/cluster"), "up", timeout=3600)
    env = dict(os.environ, TRACECAR_IMAGE_TAG=K.TAG)
    if images:
        sh(str(REPO / "scripts/images"), "agent", "agent-core", "webhook", "certs", "demo", env=env)
    names = ("agent", "agent-core", "webhook", "certs", "demo")
    sh(
        str(REPO / "scripts/cluster"),
        "load",
        *(f"localhost/tracecar-{n}:{K.TAG}" for n in names),
        timeout=1800,
    )
    kube = K.Kube(lay.kubeconfig, lay.bin / "kubectl")
    K.install(kube, timeout_s=300, restart_webhook=True)
    return kube


def _started(pod: dict[str, Any]) -> bool:
    return any(
        s["name"] == F.APP and s.get("started")
        for s in pod.get("status", {}).get("containerStatuses", [])
    )


def start_delay(
    kube: K.Kube, name: str, *, labelled: bool, variant: str | None, native: bool = True
) -> float:
    """Seconds from `kubectl create` returning to a watch seeing the app started."""
    seen = threading.Event()
    watch = subprocess.Popen(
        kube.argv(
            "get",
            "pods",
            "-n",
            K.NS,
            "--watch",
            "--output-watch-events",
            "-o",
            "json",
            f"--field-selector=metadata.name={name}",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    t_started: list[float] = []

    def read() -> None:
        assert watch.stdout is not None
        for line in watch.stdout:  # one compact JSON event per line
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if _started(event.get("object", {})):
                t_started.append(time.monotonic())
                seen.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(1.0)  # the watch is established before the pod exists
    kube.run(
        "create",
        "-f",
        "-",
        stdin=json.dumps(F.app_pod(name, labelled=labelled, variant=variant, native=native)),
    )
    t_created = time.monotonic()
    ok = seen.wait(180)
    watch.terminate()
    watch.wait(10)
    kube.run("delete", "pod", name, "-n", K.NS, "--wait=false", check=False)
    if not ok:
        raise SystemExit(f"pod {name} never started:\n{kube.logs_hint(f'pod/{name}', K.NS)}")
    return t_started[0] - t_created


def bench_start(kube: K.Kube, pods: int) -> dict[str, list[float]]:
    # (labelled, image variant, native sidecar). The classic arm is the trade docs/install.md
    # offers: the agent beside the app, started in the same pod sync.
    arms = {
        "unlabelled": (False, None, True),
        "labelled full": (True, None, True),
        "labelled core": (True, "core", True),
        "labelled full, classic sidecar": (True, None, False),
    }
    out: dict[str, list[float]] = {a: [] for a in arms}
    # A first pod of each arm, not counted: the node's first start of each image and
    # of the webhook's code path.
    for labelled, variant, native in arms.values():
        start_delay(
            kube, f"warm-{secrets.token_hex(3)}", labelled=labelled, variant=variant, native=native
        )
    for i in range(pods):
        for arm, (labelled, variant, native) in arms.items():
            name = f"start-{i}-{secrets.token_hex(3)}"
            d = start_delay(kube, name, labelled=labelled, variant=variant, native=native)
            out[arm].append(d)
            print(f"  start {i + 1}/{pods} {arm}: {d:.2f} s", flush=True)
    return out


def wait_running(kube: K.Kube, name: str) -> dict[str, Any]:
    def ready() -> bool:
        st = kube.pod(name)["status"].get("containerStatuses", [])
        return bool(st) and all(s.get("started") for s in st)

    K.wait_until(ready, 180, f"pod {name}", lambda: kube.logs_hint(f"pod/{name}", K.NS))
    return kube.pod(name)


def bench_idle(kube: K.Kube, idle_s: float) -> dict[str, float]:
    name = f"idle-{secrets.token_hex(3)}"
    kube.apply(F.app_pod(name, labelled=True))
    try:
        pod = wait_running(kube, name)
        cg = F.Cgroup.of(pod)
        time.sleep(30)  # settled: start-up done, the first liveness probes run
        cpu0, t0 = cg.cpu_s(), time.monotonic()
        time.sleep(idle_s)
        cpu1, t1 = cg.cpu_s(), time.monotonic()
        return {
            "agent_rss_MB": F.agent_process_rss(kube, name) / 1e6,
            "container_working_set_MB": cg.working_set() / 1e6,
            "container_rss_MB": cg.rss() / 1e6,
            "cpu_s": cpu1 - cpu0,
            "window_s": t1 - t0,
        }
    finally:
        kube.run("delete", "pod", name, "-n", K.NS, "--wait=false", check=False)


def bench_peaks(kube: K.Kube) -> dict[str, dict[str, Any]]:
    name = f"peaks-{secrets.token_hex(3)}"
    kube.apply(F.workload_pod(name))
    results: dict[str, dict[str, Any]] = {}
    try:
        pod = wait_running(kube, name)
        cg = F.Cgroup.of(pod)
        time.sleep(10)
        results["idle (baseline)"] = {"peak_MiB": cg.working_set() / 2**20, "cpu_s": 0.0}
        with (
            K.agent_forward(kube, name) as url,
            httpx.Client(base_url=url, headers=K.auth(pod), timeout=120) as client,
        ):
            for what, run in F.CAPABILITIES.items():
                cg.reset_peak()
                cpu0, thr0, t0 = cg.cpu_s(), cg.throttled(), time.monotonic()
                said = run(client)
                results[what] = {
                    "peak_MiB": cg.peak() / 2**20,
                    "cpu_s": cg.cpu_s() - cpu0,
                    "wall_s": time.monotonic() - t0,
                    "throttled_periods": cg.throttled() - thr0,
                    "result": said,
                }
                print(f"  {what}: {results[what]}", flush=True)
        restarts, reason = F.agent_restarts(kube.pod(name))
        results["agent restarts"] = {"restarts": restarts, "last_reason": reason}
        return results
    finally:
        kube.run("delete", "pod", name, "-n", K.NS, "--wait=false", check=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pods", type=int, default=10, help="pods of each arm for the start delay")
    p.add_argument("--idle-s", type=float, default=600, help="the idle window (10 minutes)")
    p.add_argument("--skip-idle", action="store_true")
    p.add_argument("--skip-peaks", action="store_true")
    p.add_argument("--no-build", action="store_true", help="use the images as they are")
    p.add_argument("--keep", action="store_true", help="leave the cluster up")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the cluster bench needs root")
    kube = setup(images=not args.no_build)
    try:
        print("== image sizes (scripts/images sizes)")
        print(sh(str(REPO / "scripts/images"), "sizes", "agent", "agent-core", "webhook", "certs",
                 env=dict(os.environ, TRACECAR_IMAGE_TAG=K.TAG)), end="")  # fmt: skip
        print(f"== start delay: {args.pods} pods of each arm, pod created -> app started")
        delays = bench_start(kube, args.pods)
        base = statistics.median(delays["unlabelled"])
        for arm, values in delays.items():
            med = statistics.median(values)
            print(
                f"start {arm}: median {med:.2f} s (min {min(values):.2f}, max {max(values):.2f}); "
                f"added {med - base:+.2f} s, {med / base:.2f}x the unlabelled pod"
                + (
                    ""
                    if arm == "unlabelled"
                    else f" (target <= +1 s: {'met' if med - base <= 1 else 'NOT met'})"
                )
            )
        if args.skip_idle:
            idle = None
        else:
            print(f"== idle: {args.idle_s:.0f} s")
            idle = bench_idle(kube, args.idle_s)
        if idle is not None:
            print(
                f"idle agent process RSS {idle['agent_rss_MB']:.1f} MB "
                f"({idle['agent_rss_MB'] * 1e6 / 2**20:.1f} MiB; target <= 60 MB); "
                f"container working set {idle['container_working_set_MB']:.1f} MB, anonymous "
                f"{idle['container_rss_MB']:.1f} MB (target <= 75); CPU {idle['cpu_s']:.2f} s "
                f"over {idle['window_s']:.0f} s = "
                f"{100 * idle['cpu_s'] / idle['window_s']:.3f}% of a core"
            )
        if not args.skip_peaks:
            print("== peaks at the webhook's default limits")
            for what, r in bench_peaks(kube).items():
                print(f"peak {what}: {json.dumps(r)}")
    finally:
        if not args.keep:
            sh(str(REPO / "scripts/cluster"), "down", timeout=600)


if __name__ == "__main__":
    main()
