"""The agent's footprint on the dev cluster: the pods, cgroup readings and the heaviest
default of each capability. Shared by the cluster stage's test_footprint.py (the agent
is never OOM-killed or throttled into failure at its default limits) and
bench/cluster_footprint_bench.py (start delay, idle RSS and CPU, peaks; issue 23).

Memory and CPU come from the agent container's own cgroup on the node (cgroup v1 with
the cgroupfs driver here): ``memory.max_usage_in_bytes`` (reset to 0 before each
capability: its peak, page cache included, which is what the limit counts) and the
working set the kubelet reports (usage minus inactive file), ``cpuacct.usage``.
"""

from __future__ import annotations

import glob
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.cluster import kube as K

APP = "app"
THREADS = "threads"
# 200 Python threads, each busy a little and sleeping a little: py-spy's heaviest
# ordinary target (one stack per thread per sample).
THREADS_PY = (
    "import threading, time\n"
    "def spin():\n"
    "    while True:\n"
    "        sum(range(3000)); time.sleep(0.02)\n"
    "for _ in range(200):\n"
    "    threading.Thread(target=spin, daemon=True).start()\n"
    "time.sleep(10**9)\n"
)


def app_pod(
    name: str, *, labelled: bool, variant: str | None = None, native: bool = True
) -> dict[str, Any]:
    """A one-container app (the demo image's burner); labelled: the agent injected, as a
    native sidecar unless ``native`` is false (the classic sidecar, beside the app)."""
    annotations = {"tracecar.dev/image-variant": variant} if variant else {}
    if not native:
        annotations["tracecar.dev/native-sidecar"] = "false"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": K.NS,
            "labels": {"app": "footprint", **({"profiling": "enabled"} if labelled else {})},
            "annotations": annotations,
        },
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": APP,
                    "image": K.DEMO_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/usr/local/bin/burner"],
                    "resources": {"limits": {"cpu": "200m", "memory": "64Mi"}},
                }
            ],
        },
    }


def workload_pod(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """The capability workloads: the demo's C burner and Python logger, and a Python
    process with 200 threads; labelled, the agent at its defaults (or `annotations`)."""
    pod = app_pod(name, labelled=True)
    pod["metadata"]["annotations"] = dict(annotations or {})
    pod["spec"]["containers"] = [
        {
            "name": "burner",
            "image": K.DEMO_IMAGE,
            "imagePullPolicy": "Never",
            "command": ["/usr/local/bin/burner"],
            "resources": {"limits": {"cpu": "300m", "memory": "64Mi"}},
        },
        {
            "name": "logger",
            "image": K.DEMO_IMAGE,
            "imagePullPolicy": "Never",
            "command": ["python3", "/usr/local/bin/logger.py"],
            "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}},
        },
        {
            "name": THREADS,
            "image": K.DEMO_IMAGE,
            "imagePullPolicy": "Never",
            "command": ["python3", "-c", THREADS_PY],
            "resources": {"limits": {"cpu": "300m", "memory": "128Mi"}},
        },
    ]
    return pod


def container_id(pod: dict[str, Any], name: str) -> str:
    for st in [
        *pod["status"].get("initContainerStatuses", []),
        *pod["status"].get("containerStatuses", []),
    ]:
        if st["name"] == name and st.get("containerID"):
            return str(st["containerID"]).split("://", 1)[1]
    raise AssertionError(f"no container {name} in {pod['metadata']['name']}")


def cgroup_dir(controller: str, cid: str) -> Path:
    found = glob.glob(f"/sys/fs/cgroup/{controller}/kubepods*/**/{cid}", recursive=True)
    if not found:
        raise AssertionError(f"no {controller} cgroup for container {cid}")
    return Path(found[0])


@dataclass
class Cgroup:
    """The agent container's memory and CPU accounting, read (and reset) on the node."""

    memory: Path
    cpu: Path

    @classmethod
    def of(cls, pod: dict[str, Any], container: str = K.AGENT) -> Cgroup:
        cid = container_id(pod, container)
        return cls(cgroup_dir("memory", cid), cgroup_dir("cpuacct", cid))

    def _read(self, name: str, where: Path | None = None) -> int:
        return int(((where or self.memory) / name).read_text().split()[0])

    def stat(self) -> dict[str, int]:
        out = {}
        for line in (self.memory / "memory.stat").read_text().splitlines():
            k, v = line.split()
            out[k] = int(v)
        return out

    def working_set(self) -> int:
        """What the kubelet calls the working set: usage minus inactive file cache."""
        return max(0, self._read("memory.usage_in_bytes") - self.stat()["total_inactive_file"])

    def rss(self) -> int:
        """Anonymous memory of the container's processes (no page cache)."""
        s = self.stat()
        return s["total_rss"] + s.get("total_shmem", 0)

    def reset_peak(self) -> None:
        (self.memory / "memory.max_usage_in_bytes").write_text("0")

    def peak(self) -> int:
        return self._read("memory.max_usage_in_bytes")

    def failcnt(self) -> int:
        return self._read("memory.failcnt")

    def cpu_s(self) -> float:
        return self._read("cpuacct.usage", self.cpu) / 1e9

    def throttled(self) -> int:
        """Periods the CFS quota throttled the container (cpu.stat nr_throttled)."""
        stat = Path(str(self.cpu).replace("/cpuacct/", "/cpu/")) / "cpu.stat"
        if not stat.exists():
            stat = self.cpu / "cpu.stat"
        for line in stat.read_text().splitlines():
            if line.startswith("nr_throttled"):
                return int(line.split()[1])
        return 0


def agent_process_rss(kube: K.Kube, pod: str) -> int:
    """VmRSS of the agent's own process (tracecar-agent serve), read in its container."""
    script = (
        "for p in /proc/[0-9]*; do "
        'case "$(tr "\\0" " " < $p/cmdline 2>/dev/null)" in '
        '*bin/tracecar-agent*|*"-m agent"*) grep VmRSS $p/status;; esac; done'
    )
    out = kube.run("exec", "-n", K.NS, pod, "-c", K.AGENT, "--", "sh", "-c", script).stdout
    values = [int(line.split()[1]) * 1024 for line in out.splitlines() if "VmRSS" in line]
    assert values, out
    return max(values)


def pid_of(client: httpx.Client, container: str) -> int:
    r = client.get("/processes")
    r.raise_for_status()
    body = r.json()
    procs = body["processes"] if isinstance(body, dict) else body
    mine = [p for p in procs if p["container"] == container]
    assert mine, procs
    return int(min(mine, key=lambda p: int(p["pid"]))["pid"])


def _job(client: httpx.Client, path: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        state: dict[str, Any] = client.get(path).json()
        if state.get("state") in {"succeeded", "failed", "finished", "stopped"}:
            return state
        assert time.monotonic() < deadline, state
        time.sleep(1)


def perf_60s(client: httpx.Client) -> str:
    """perf record of the C burner for 60 s (the default 99 Hz, frame pointers), then
    its post-processing into a flame graph."""
    pid = pid_of(client, "burner")
    r = client.post(
        "/profiles",
        params={"wait": "true", "format": "svg"},
        json={"pid": pid, "duration_s": 60, "profiler": "perf"},
        timeout=400,
    )
    assert r.status_code == 200, r.text[:2000]
    return f"{len(r.content)} bytes of SVG"


def pyspy_200_threads(client: httpx.Client) -> str:
    """py-spy on the 200-thread Python process for the default 10 s."""
    pid = pid_of(client, THREADS)
    r = client.post(
        "/profiles",
        params={"wait": "true", "format": "folded"},
        json={"pid": pid, "duration_s": 10},
        timeout=300,
    )
    assert r.status_code == 200, r.text[:2000]
    return f"{len(r.text.splitlines())} stacks"


def bpftrace_histogram(client: httpx.Client) -> str:
    """A bpftrace latency histogram of the burner's hot function (maps), 20 s."""
    pid = pid_of(client, "burner")
    r = client.post(
        "/probes",
        json={
            "pid": pid,
            "function": "tracecar_demo_hot",
            "mode": "histogram",
            "duration_s": 20,
        },
        timeout=120,
    )
    assert r.status_code == 201, r.text
    probe_id = r.json()["id"]
    try:
        state = _job(client, f"/probes/{probe_id}", 120)
        assert state.get("state") == "finished", state
        return f"{state.get('hits')} hits"
    finally:
        client.delete(f"/probes/{probe_id}")


def lttng_buffers(client: httpx.Client) -> str:
    """An LTTng session with the default buffers, recording the Python logger 10 s."""
    r = client.post(
        "/lttng/sessions",
        json={"events": [{"domain": "python", "names": ["tracecar.demo"]}], "start": True},
        timeout=120,
    )
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    try:
        time.sleep(10)
        r = client.post(f"/lttng/sessions/{sid}/stop", timeout=120)
        assert r.status_code in (200, 202, 204), r.text
        r = client.get(f"/lttng/sessions/{sid}/events", params={"format": "json"}, timeout=120)
        assert r.status_code == 200, r.text
        return f"{len(r.text.splitlines())} events"
    finally:
        client.delete(f"/lttng/sessions/{sid}", timeout=120)


CAPABILITIES: dict[str, Callable[[httpx.Client], str]] = {
    "perf record 60 s + flame graph": perf_60s,
    "py-spy, 200-thread process, 10 s": pyspy_200_threads,
    "bpftrace histogram, 20 s": bpftrace_histogram,
    "LTTng session, default buffers, 10 s": lttng_buffers,
}


def agent_restarts(pod: dict[str, Any]) -> tuple[int, str | None]:
    """The agent container's restarts and its last termination reason (OOMKilled...)."""
    for st in [
        *pod["status"].get("initContainerStatuses", []),
        *pod["status"].get("containerStatuses", []),
    ]:
        if st["name"] == K.AGENT:
            last = st.get("lastState", {}).get("terminated") or {}
            return int(st.get("restartCount", 0)), last.get("reason")
    raise AssertionError(json.dumps(pod["status"])[:2000])
