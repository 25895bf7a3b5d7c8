"""The cluster stage's helpers: kubectl against the dev cluster, waits, port-forward.

Everything goes through the real kubectl (the version-matched build in the cluster's
cache) the way a user types it; nothing here talks to the API any other way."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
TAG = "0.1.0"  # what deploy/ names, so `kubectl apply -k deploy/` needs no overlay here
AGENT_IMAGE = f"localhost/tracecar-agent:{TAG}"
WEBHOOK_IMAGE = f"localhost/tracecar-webhook:{TAG}"
AGENT_CORE_IMAGE = f"localhost/tracecar-agent-core:{TAG}"
CERTS_IMAGE = f"localhost/tracecar-certs:{TAG}"
DEMO_IMAGE = f"localhost/tracecar-demo:{TAG}"
AGENT = "tracecar-agent"
NS = "tracecar-e2e"


class Kube:
    def __init__(self, kubeconfig: Path, kubectl: Path) -> None:
        self.kubeconfig = kubeconfig
        self.bin = kubectl

    def argv(self, *args: str) -> list[str]:
        return [str(self.bin), f"--kubeconfig={self.kubeconfig}", *args]

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            self.argv(*args), input=stdin, capture_output=True, text=True, timeout=timeout
        )
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{res.stderr}{res.stdout}")
        return res

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def apply(
        self, manifest: dict[str, Any] | str, *extra: str
    ) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        return self.run("apply", "-f", "-", *extra, stdin=text)

    def pod(self, name: str, ns: str = NS) -> dict[str, Any]:
        pod: dict[str, Any] = self.json("get", "pod", name, "-n", ns)
        return pod

    def logs_hint(self, kind_name: str, ns: str) -> str:
        res = self.run("describe", kind_name, "-n", ns, check=False)
        return res.stdout[-3000:]


def wait_until(
    cond: Callable[[], bool], timeout_s: float, what: str, hint: Callable[[], str] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.5)
    raise AssertionError(
        f"timed out after {timeout_s:.0f}s waiting for {what}\n{hint() if hint else ''}"
    )


def webhook_rolled_out(kube: Kube, *, timeout_s: int = 180) -> None:
    """The webhook's Deployment rolled out (every replica on the current template)."""
    kube.run(
        "rollout", "status", "-n", "tracecar-system", "deploy/tracecar-webhook",
        f"--timeout={timeout_s}s", timeout=timeout_s + 20,
    )  # fmt: skip


def install(kube: Kube, *, timeout_s: int = 180, restart_webhook: bool = False) -> None:
    """tracecar installed exactly as docs/install.md says (`kubectl apply -k deploy/`, the
    certificates' job complete, the webhook rolled out), and the privileged namespace
    the pods under test run in. Shared by the cluster stage's fixture and
    bench/cluster_footprint_bench.py. ``restart_webhook``: a reused cluster runs the
    webhook from the image loaded last time under the same tag; restart it on the one
    just loaded."""
    kube.run("apply", "-k", str(REPO / "deploy"), timeout=timeout_s + 120)
    kube.run(
        "wait", "-n", "tracecar-system", "--for=condition=complete", "job/tracecar-certs",
        f"--timeout={timeout_s}s", timeout=timeout_s + 20,
    )  # fmt: skip
    if restart_webhook:
        kube.run("rollout", "restart", "-n", "tracecar-system", "deploy/tracecar-webhook")
    webhook_rolled_out(kube, timeout_s=timeout_s)
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": NS,
                "labels": {"pod-security.kubernetes.io/enforce": "privileged"},
            },
        }
    )
    wait_until(
        lambda: kube.run("get", "sa", "default", "-n", NS, check=False).returncode == 0,
        60,
        "the namespace's default service account",
    )


@contextmanager
def port_forward(kube: Kube, target: str, port: int, ns: str = NS) -> Iterator[str]:
    """`kubectl port-forward TARGET :PORT` (a free local port), the kubelet's real
    streaming path; yields the local base URL and stops the forwarder after."""
    proc = subprocess.Popen(
        kube.argv("port-forward", "-n", ns, target, f":{port}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not m:
            proc.kill()
            raise AssertionError(
                f"port-forward to {target} did not start: {line}{proc.stdout.read()}"
            )
        yield f"http://127.0.0.1:{m.group(1)}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def agent_forward(kube: Kube, pod: str, port: int = 7780, ns: str = NS) -> Iterator[str]:
    """A port-forward to an agent that answers /healthz. kubectl port-forward gives up
    on the first refused connection ("lost connection to pod"), which a container that
    is Running but not yet listening causes: start a fresh one until the agent answers."""
    deadline = time.monotonic() + 60
    while True:
        with port_forward(kube, f"pod/{pod}", port, ns) as url:
            try:
                httpx.get(f"{url}/healthz", timeout=10).raise_for_status()
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
            else:
                yield url
                return
        time.sleep(1)


def auth(pod: dict[str, Any]) -> dict[str, str]:
    """The Authorization header for the pod's agent: the token the webhook put into the
    agent container's env (docs/security.md), read from the pod as the API stores it."""
    for c in containers(pod).values():
        if c["name"] == AGENT:
            for e in c.get("env", []):
                if e["name"] == "TRACECAR_AGENT_TOKEN":
                    return {"Authorization": f"Bearer {e['value']}"}
    raise AssertionError("the pod's agent has no TRACECAR_AGENT_TOKEN")


def pod_processes(uid: str) -> list[str]:
    """Processes on the node still in the pod's cgroup (cgroupfs: podUID, systemd:
    podUID with underscores), as "pid comm"."""
    keys = (f"pod{uid}", f"pod{uid.replace('-', '_')}")
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cg = (proc / "cgroup").read_text()
            comm = (proc / "comm").read_text().strip()
        except OSError:
            continue
        if any(k in cg for k in keys):
            out.append(f"{proc.name} {comm}")
    return out


def containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = pod["spec"]
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec.get("containers", [])]}


def demo_deployment(
    name: str,
    *,
    labelled: bool = True,
    annotations: dict[str, str] | None = None,
    replicas: int = 1,
    logger: bool = True,
    lttng_wait_s: int = 5,
) -> dict[str, Any]:
    labels = {"app": name}
    if labelled:
        labels["profiling"] = "enabled"
    # Small requests: several replicas (and the agents' own requests) fit the 2-core node.
    small = {"requests": {"cpu": "20m", "memory": "32Mi"}}
    containers: list[dict[str, Any]] = [
        {
            "name": "burner",
            "image": DEMO_IMAGE,
            "command": ["/usr/local/bin/burner"],
            "resources": {**small, "limits": {"cpu": "500m", "memory": "64Mi"}},
        }
    ]
    if logger:
        # Imports lttngust at start: registers only because the native sidecar's
        # session daemon is already up. It waits lttng_wait_s for the daemon's port
        # file and then exits 1 (a restart the tests see): 5 s by default, which only
        # a sidecar started before the app meets; classic mode needs the long wait.
        containers.append(
            {
                "name": "logger",
                "image": DEMO_IMAGE,
                "command": ["python3", "/usr/local/bin/logger.py"],
                "env": [{"name": "TRACECAR_DEMO_WAIT_S", "value": str(lttng_wait_s)}],
                "resources": {**small, "limits": {"cpu": "200m", "memory": "64Mi"}},
            }
        )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels, "annotations": annotations or {}},
                "spec": {"terminationGracePeriodSeconds": 2, "containers": containers},
            },
        },
    }


def is_ready(p: dict[str, Any]) -> bool:
    conds = {c["type"]: c["status"] for c in p["status"].get("conditions", [])}
    return conds.get("Ready") == "True" and not p["metadata"].get("deletionTimestamp")


def ready_pods(kube: Kube, app: str, n: int = 1) -> list[dict[str, Any]]:
    """At least ``n`` Ready pods of deploy/APP (after its rollout), sorted by name."""
    kube.run("rollout", "status", "-n", NS, f"deploy/{app}", "--timeout=180s", timeout=200)
    pods: list[dict[str, Any]] = []

    def ready() -> bool:
        nonlocal pods
        items = kube.json("get", "pods", "-n", NS, "-l", f"app={app}")["items"]
        pods = sorted((p for p in items if is_ready(p)), key=lambda p: p["metadata"]["name"])
        return len(pods) >= n

    wait_until(ready, 90, f"{n} Ready pod(s) of deploy/{app}")
    return pods


def bare_pod(name: str, *, ns: str = NS, labelled: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {"profiling": "enabled"} if labelled else {},
        },
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": DEMO_IMAGE, "command": ["sleep", "3600"]}],
        },
    }
