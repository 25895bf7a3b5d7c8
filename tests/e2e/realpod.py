"""The real-pod harness: podman images, the webhook container, the demo pod, port-forward.

Owns every podman call of the e2e stage and the clean-up of what they start. Each
piece is a context manager that removes what it created even when the body fails:
the webhook container (`podman rm -f`), the pod (`podman kube down`, then
`podman pod rm -f`), the port-forward process (terminated and reaped).

Everything runs with CONTAINERS_CONF pointing at deploy/podman/containers.conf (runc,
no default ulimits: see docs/e2e.md) and argument lists, never a shell.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = ROOT / "deploy/podman/containers.conf"
TAG = os.environ.get("TRACECAR_IMAGE_TAG", "dev")
AGENT_IMAGE = f"localhost/tracecar-agent:{TAG}"
AGENT_CORE_IMAGE = f"localhost/tracecar-agent-core:{TAG}"
CERTS_IMAGE = f"localhost/tracecar-certs:{TAG}"
WEBHOOK_IMAGE = f"localhost/tracecar-webhook:{TAG}"
DEMO_IMAGE = f"localhost/tracecar-demo:{TAG}"
AGENT_CONTAINER = "tracecar-agent"
PODMAN_MAX_ANNOTATION = 63


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, timeout: float = 120, check: bool = True) -> str:
    """Run podman; on failure raise with its stderr (what the test report should show)."""
    done = subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        env=podman_env(),
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise RuntimeError(
            f"podman {' '.join(args)} failed ({done.returncode}): {done.stdout}{done.stderr}"
        )
    return done.stdout.strip()


def build_images(*, timeout: float = 900) -> None:
    """Build the base image (if missing) and the agent (both variants), webhook, certs
    and demo images.

    Layers are cached, so this takes seconds when nothing changed; set
    TRACECAR_E2E_SKIP_BUILD=1 to use the images as they are. ``timeout`` only stops a
    hung build: the e2e stage builds before pytest with a longer one (a first build on
    a busy machine took more than 15 minutes), so the fixture's call is a cache hit.
    """
    if os.environ.get("TRACECAR_E2E_SKIP_BUILD"):
        return
    done = subprocess.run(
        [str(ROOT / "scripts/images"), "agent", "agent-core", "webhook", "certs", "demo"],
        capture_output=True,
        text=True,
        env={**podman_env(), "TRACECAR_IMAGE_TAG": TAG},
        timeout=timeout,
        check=False,
    )
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"scripts/images failed ({done.returncode}):\n{done.stderr[-4000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_certs(out_dir: Path) -> Path:
    """CA and serving certificate for localhost from certs/; returns the CA file.

    The files are made world-readable, as a Kubernetes Secret volume's default mode
    (0644) makes them: the webhook image runs as a non-root user.
    """
    subprocess.run(
        [
            sys.executable, "-m", "certs", "local", "--out-dir", str(out_dir),
            "--dns", "localhost", "--ip", "127.0.0.1",
        ],
        check=True, capture_output=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    out_dir.chmod(0o755)
    for f in out_dir.iterdir():
        f.chmod(0o644)
    return out_dir / "ca.crt"


@dataclass(frozen=True)
class Webhook:
    url: str
    ca_file: Path
    container: str

    def client(self) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        return httpx.Client(base_url=self.url, verify=ctx, timeout=10)


@contextlib.contextmanager
def webhook_container(cert_dir: Path) -> Iterator[Webhook]:
    """The webhook image in a container, its port published on loopback only."""
    ca = make_certs(cert_dir)
    name = f"tracecar-e2e-webhook-{secrets.token_hex(3)}"
    port = free_port()
    podman(
        "run", "-d", "--name", name, "--ulimit", "host",
        "-p", f"127.0.0.1:{port}:8443",
        "-v", f"{cert_dir}:/certs:ro",
        "-e", "TRACECAR_WEBHOOK_CERT_FILE=/certs/tls.crt",
        "-e", "TRACECAR_WEBHOOK_KEY_FILE=/certs/tls.key",
        "-e", "TRACECAR_WEBHOOK_HOST=0.0.0.0",
        "-e", "TRACECAR_WEBHOOK_PORT=8443",
        "-e", f"TRACECAR_WEBHOOK_AGENT_IMAGE={AGENT_IMAGE}",
        "-e", f"TRACECAR_WEBHOOK_AGENT_CORE_IMAGE={AGENT_CORE_IMAGE}",
        WEBHOOK_IMAGE,
    )  # fmt: skip
    try:
        hook = Webhook(url=f"https://localhost:{port}", ca_file=ca, container=name)
        wait_until(lambda: _ok(hook.client, "/healthz"), 30, f"webhook {name} /healthz", name)
        yield hook
    finally:
        podman("rm", "-f", "-t", "5", name, check=False, timeout=60)


def _ok(client_factory: Any, path: str) -> bool:
    try:
        with client_factory() as c:
            return bool(c.get(path).status_code == 200)
    except httpx.HTTPError:
        return False


def wait_until(cond: Any, timeout_s: float, what: str, container: str | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.25)
    logs = podman("logs", "--tail", "40", container, check=False) if container else ""
    raise TimeoutError(f"{what}: not ready after {timeout_s:.0f} s\n{logs}")


def demo_pod(name: str) -> dict[str, Any]:
    """demo/pod.yaml, renamed (runs never collide) and pointing at this run's image tag."""
    pod: dict[str, Any] = yaml.safe_load((ROOT / "demo/pod.yaml").read_text())
    pod["metadata"]["name"] = name
    for c in pod["spec"]["containers"]:
        c["image"] = DEMO_IMAGE
    return pod


def admission_review(pod: dict[str, Any], *, namespace: str = "default") -> dict[str, Any]:
    """What the API server sends for `kubectl apply` of this pod."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": f"e2e-{secrets.token_hex(8)}",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"]["name"],
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "e2e", "groups": ["system:authenticated"]},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def apply_review(pod: dict[str, Any], review: dict[str, Any]) -> dict[str, Any]:
    """The pod as the API server would store it after the webhook's JSONPatch."""
    response = review["response"]
    if "patch" not in response:
        return copy.deepcopy(pod)
    ops = json.loads(base64.b64decode(response["patch"]))
    patched: dict[str, Any] = jsonpatch.apply_patch(pod, ops)
    return patched


def for_podman(pod: dict[str, Any], *, namespace: str = "default") -> dict[str, Any]:
    """Fill in what the API server and kubelet would and podman 4.3's `kube play` does not.

    - Downward-API env from `metadata.namespace`: podman rejects that fieldPath
      ("not valid or not supported"); the kubelet would set the pod's namespace,
      so that value is written in; `spec.nodeName` likewise (the scheduler would set
      it: the machine's host name is written in). `metadata.name` and `metadata.uid`
      podman does.
    - Annotation values longer than 63 characters: podman before 5.0 rejects them
      ("value length exceeds Kubernetes max 63", containers/podman#21663; Kubernetes
      allows 256 KB), and the webhook's `tracecar.dev/status` is a JSON document. Pods
      do not read their annotations, so such values are dropped from the copy podman
      gets (the tests check them on the patched pod itself).
    Nothing else is changed: the pod runs as the webhook made it.
    """
    out = copy.deepcopy(pod)
    annotations = out["metadata"].get("annotations") or {}
    for key in [k for k, v in annotations.items() if len(str(v)) > PODMAN_MAX_ANNOTATION]:
        del annotations[key]
    spec = out["spec"]
    for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        for e in c.get("env", []):
            ref = (e.get("valueFrom") or {}).get("fieldRef") or {}
            if ref.get("fieldPath") == "metadata.namespace":
                e.pop("valueFrom")
                e["value"] = namespace
            elif ref.get("fieldPath") == "spec.nodeName":
                e.pop("valueFrom")
                e["value"] = socket.gethostname()
    return out


@dataclass
class RealPod:
    name: str
    manifest: Path

    def container(self, name: str) -> str:
        return f"{self.name}-{name}"

    def states(self) -> dict[str, str]:
        """Container name (as in the manifest) -> podman state, e.g. "running"."""
        out = podman("ps", "-a", "--filter", f"pod={self.name}", "--format", "json")
        prefix = f"{self.name}-"
        return {
            c["Names"][0].removeprefix(prefix): str(c["State"])
            for c in json.loads(out or "[]")
            if c["Names"][0].startswith(prefix)
        }

    def infra_pid(self) -> int:
        infra = podman("pod", "inspect", self.name, "--format", "{{.InfraContainerID}}")
        return int(podman("inspect", "-f", "{{.State.Pid}}", infra))

    def ip(self) -> str:
        infra = podman("pod", "inspect", self.name, "--format", "{{.InfraContainerID}}")
        fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
        return podman("inspect", "-f", fmt, infra).split(" ")[0]

    def logs(self, container: str, tail: int = 40) -> str:
        return podman("logs", "--tail", str(tail), self.container(container), check=False)


@contextlib.contextmanager
def kube_play(pod: dict[str, Any], workdir: Path) -> Iterator[RealPod]:
    manifest = workdir / f"{pod['metadata']['name']}.yaml"
    manifest.write_text(yaml.safe_dump(pod, sort_keys=False))
    real = RealPod(name=pod["metadata"]["name"], manifest=manifest)
    try:
        podman("kube", "play", str(manifest), timeout=180)
        yield real
    finally:
        podman("kube", "down", str(manifest), check=False, timeout=120)
        podman("pod", "rm", "-f", "-t", "5", real.name, check=False, timeout=120)


_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)")


@contextlib.contextmanager
def port_forward(pod: RealPod, remote_port: int) -> Iterator[str]:
    """scripts/port-forward POD 0:PORT: yields the local base URL."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts/port-forward"), pod.name, f"0:{remote_port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=podman_env(),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = _FORWARDING.search(line)
        if not m:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise RuntimeError(f"port-forward did not start: {line!r} {err}")
        yield f"http://127.0.0.1:{m.group(1)}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def healthy(url: str) -> bool:
    """The agent at `url` answers /healthz."""
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def agent_port(pod: dict[str, Any]) -> int:
    """The agent's port as the webhook set it (TRACECAR_AGENT_PORT on the sidecar)."""
    spec = pod["spec"]
    for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        if c["name"] == AGENT_CONTAINER:
            for e in c.get("env", []):
                if e["name"] == "TRACECAR_AGENT_PORT":
                    return int(e["value"])
    raise AssertionError("no tracecar-agent container with TRACECAR_AGENT_PORT in the pod")


TOKEN_JSONPATH = '{..env[?(@.name=="TRACECAR_AGENT_TOKEN")].value}'
"""The README's one-liner (``kubectl get pod POD -o jsonpath=...``): the agent's token,
wherever the agent is (initContainers in native-sidecar mode, containers in classic)."""


def token_from_spec(pod: dict[str, Any], workdir: Path) -> str:
    """The agent's token read from the pod spec with kubectl's own JSONPath, as a user
    with `get pods` rights does. No cluster here: `kubectl label --local` prints the
    local object through the same -o jsonpath printer as `kubectl get pod`."""
    spec_file = workdir / "pod-as-stored.json"
    spec_file.write_text(json.dumps(pod))
    done = subprocess.run(
        [
            "kubectl", "label", "--local", "-f", str(spec_file), "tracecar-e2e=read",
            "-o", f"jsonpath={TOKEN_JSONPATH}",
        ],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "KUBECONFIG": os.devnull},
    )  # fmt: skip
    spec_file.unlink()
    if done.returncode != 0:
        raise RuntimeError(f"kubectl jsonpath failed ({done.returncode}): {done.stderr}")
    return done.stdout.strip()


def exec_python(pod: RealPod, container: str, code: str, *args: str) -> str:
    """Run python3 code inside a container of the pod (as `kubectl exec` would)."""
    return podman("exec", pod.container(container), "python3", "-c", code, *args, timeout=60)


# A compromised app container: same loopback, same PID namespace, no token.
_CALL_AGENT = """
import sys, urllib.error, urllib.request
url, token = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url, headers={"Authorization": "Bearer " + token} if token else {})
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"""


def call_agent(pod: RealPod, container: str, url: str, *, token: str) -> str:
    """``STATUS BODY`` of a GET of the agent from inside another container of the pod
    (the pod's loopback, as an app would call it); ``token=""`` sends no header."""
    return exec_python(pod, container, _CALL_AGENT, url, token)


def need_tools() -> None:
    tools = ("podman", "nsenter", "debootstrap", "gcc", "kubectl")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"missing tools {missing}: run scripts/setup")
