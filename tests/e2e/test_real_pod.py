"""The project's end-to-end test: the real pod, in podman (`scripts/test e2e`).

Both images are built with podman, the webhook image runs in a container with
certificates from certs/, the demo pod (demo/pod.yaml, labelled profiling=enabled)
goes through its /mutate over verified TLS, the returned JSONPatch is applied, and
`podman kube play` runs the patched pod. The agent is reached the way
`kubectl port-forward` reaches it: through the pod's network namespace, on loopback.
Then each capability is used on the demo app for real, one test each so a failure
names the capability: processes, a flame graph, a uprobe, an LTTng session.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.e2e import realpod

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

HOT = "tracecar_demo_hot"
COLD = "tracecar_demo_cold"


def _containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = pod["spec"]
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec.get("containers", [])]}


def _processes(agent: httpx.Client) -> list[dict[str, Any]]:
    r = agent.get("/processes")
    assert r.status_code == 200, r.text
    body = r.json()
    procs = body["processes"] if isinstance(body, dict) else body
    assert isinstance(procs, list)
    return procs


@pytest.fixture(scope="module")
def burner_pid(agent_url: str, agent_token: str) -> int:
    headers = {"Authorization": f"Bearer {agent_token}"}
    with httpx.Client(base_url=agent_url, timeout=30, headers=headers) as agent:
        procs = [p for p in _processes(agent) if p["comm"] == "burner"]
    assert len(procs) == 1, procs
    return int(procs[0]["pid"])


def test_webhook_injects_the_agent(review: dict[str, Any], patched_pod: dict[str, Any]) -> None:
    response = review["response"]
    assert response["allowed"] is True
    assert response.get("patchType") == "JSONPatch"
    containers = _containers(patched_pod)
    assert set(containers) == {"burner", "logger", realpod.AGENT_CONTAINER}
    sidecar = containers[realpod.AGENT_CONTAINER]
    assert sidecar["image"] == realpod.AGENT_IMAGE
    # classic mode, as the demo pod's tracecar.dev/native-sidecar annotation asks
    assert realpod.AGENT_CONTAINER in {c["name"] for c in patched_pod["spec"]["containers"]}
    assert patched_pod["spec"]["shareProcessNamespace"] is True
    for app in ("burner", "logger"):
        env = {e["name"]: e.get("value") for e in containers[app].get("env", [])}
        assert env.get("TRACECAR_CONTAINER") == app
        mounts = {m["mountPath"] for m in containers[app].get("volumeMounts", [])}
        assert "/var/run/lttng" in mounts
    assert "/var/run/lttng" in {m["mountPath"] for m in sidecar.get("volumeMounts", [])}


def test_pod_runs_app_and_agent(
    real_pod: realpod.RealPod, patched_pod: dict[str, Any], agent_url: str
) -> None:
    states = real_pod.states()
    assert states.get("burner") == "running", states
    assert states.get("logger") == "running", states
    assert states.get(realpod.AGENT_CONTAINER) == "running", states
    # The agent listens on the pod's loopback only: reachable through the pod's network
    # namespace (port-forward), not on the pod's IP from outside.
    assert httpx.get(f"{agent_url}/healthz", timeout=5).status_code == 200
    ip = real_pod.ip()
    assert ip, "the pod has no IP on podman's network"
    port = realpod.agent_port(patched_pod)
    with pytest.raises((httpx.ConnectError, httpx.ConnectTimeout)):
        httpx.get(f"http://{ip}:{port}/healthz", timeout=5)


def test_agent_liveness_probe_passes(real_pod: realpod.RealPod, agent_url: str) -> None:
    # podman turns the sidecar's exec livenessProbe into a container healthcheck; with no
    # systemd here to schedule it, run it once as the kubelet would (raises if unhealthy).
    realpod.podman("healthcheck", "run", real_pod.container(realpod.AGENT_CONTAINER))


_READ_AGENT_ENV = """
import os
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        continue
    if b"tracecar-agent" not in cmd or b"healthcheck" in cmd:
        continue
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            print("read", pid, b"TRACECAR_AGENT_TOKEN" in f.read())
    except OSError as e:
        print("denied", pid, e.errno)
"""


def test_another_container_of_the_pod_is_refused(
    real_pod: realpod.RealPod, patched_pod: dict[str, Any], agent_token: str
) -> None:
    port = realpod.agent_port(patched_pod)
    base = f"http://127.0.0.1:{port}"
    # /healthz is open (the exec probe); everything else needs the token.
    assert realpod.call_agent(real_pod, "logger", f"{base}/healthz", token="")[:3] == "200"
    for path in ("/processes", "/capabilities", "/probes"):
        out = realpod.call_agent(real_pod, "logger", base + path, token="")
        assert out.startswith("401 "), out
        assert "Authorization: Bearer <token>" in out and "kubectl get pod" in out, out
        assert agent_token not in out
        guessed = realpod.call_agent(real_pod, "logger", base + path, token="x" * 43)
        assert guessed.startswith("401 ") and "wrong" in guessed, guessed
    # Nor can it read the token out of the agent's environment: the agent holds
    # capabilities the app container lacks, so /proc/PID/environ is denied (EACCES).
    seen = realpod.exec_python(real_pod, "logger", _READ_AGENT_ENV).splitlines()
    assert seen and all(line.startswith("denied ") for line in seen), seen


def test_the_port_forwarded_user_with_the_token_is_served(
    agent_url: str, agent_token: str, agent: httpx.Client
) -> None:
    # The same request without the token, through the same port-forward: refused.
    r = httpx.get(f"{agent_url}/capabilities", timeout=30)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    caps = agent.get("/capabilities")
    assert caps.status_code == 200, caps.text
    assert caps.json()["auth"] == {"required": True, "scheme": "Bearer", "source": "env"}
    assert agent_token not in caps.text


def test_the_token_is_in_no_log(
    real_pod: realpod.RealPod, webhook: realpod.Webhook, agent_token: str
) -> None:
    for container in ("logger", "burner", realpod.AGENT_CONTAINER):
        assert agent_token not in real_pod.logs(container, tail=10_000)
    assert agent_token not in realpod.podman("logs", webhook.container, check=False)


def test_processes_lists_the_demo_apps_by_container(agent: httpx.Client) -> None:
    procs = _processes(agent)
    by_container: dict[str, set[str]] = {}
    for p in procs:
        by_container.setdefault(str(p["container"]), set()).add(str(p["comm"]))
    assert "burner" in by_container.get("burner", set()), by_container
    assert any(c.startswith("python") for c in by_container.get("logger", set())), by_container
    burner = next(p for p in procs if p["comm"] == "burner")
    assert burner["runtime"] == "native"
    logger = next(p for p in procs if p["container"] == "logger")
    assert logger["runtime"] == "python"


def test_flame_graph_of_the_demo_app(agent: httpx.Client, burner_pid: int) -> None:
    r = agent.post(
        "/profiles",
        params={"wait": "true", "format": "svg"},
        json={"pid": burner_pid, "duration_s": 2},
    )
    assert r.status_code == 200, r.text
    assert "svg" in r.headers["content-type"]
    svg = r.text
    assert svg.lstrip().startswith(("<?xml", "<svg"))
    assert HOT in svg
    assert "burner" in svg


def test_folded_profile_shows_the_hot_function_dominating(
    agent: httpx.Client, burner_pid: int
) -> None:
    r = agent.post(
        "/profiles",
        params={"wait": "true", "format": "folded"},
        json={"pid": burner_pid, "duration_s": 2},
    )
    assert r.status_code == 200, r.text
    hot = cold = total = 0
    for line in r.text.splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        hot += n if HOT in frames[-1] else 0
        cold += n if COLD in frames[-1] else 0
    assert total > 0
    # 10:1 by construction; generous bounds: the machine is shared.
    assert hot / total > 0.7, r.text
    assert hot > 3 * cold, r.text


def test_probe_counts_calls_of_the_hot_function(agent: httpx.Client, burner_pid: int) -> None:
    r = agent.post(
        "/probes",
        json={"pid": burner_pid, "function": HOT, "mode": "count", "duration_s": 2},
    )
    assert r.status_code == 201, r.text
    probe_id = r.json()["id"]
    try:
        deadline = time.monotonic() + 30
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            state = agent.get(f"/probes/{probe_id}").json()
            if state.get("state") in {"finished", "failed"}:
                break
            time.sleep(0.5)
        # a probe that ends by its own duration stays readable, finished
        assert state.get("state") == "finished", state
        # ~125 calls a second (demo/burner.c); any is proof the uprobe fired in the pod
        assert int(state["hits"]) > 0, state
    finally:
        agent.delete(f"/probes/{probe_id}")


def test_lttng_session_captures_python_logging(
    agent: httpx.Client, real_pod: realpod.RealPod
) -> None:
    # The logger container waits for the agent's session daemon, then registers
    # (demo/logger.py): wait for its first log line before tracing.
    try:
        realpod.wait_until(
            lambda: "registered" in real_pod.logs("logger"),
            30,
            "demo logger registered with the LTTng session daemon",
            real_pod.container("logger"),
        )
    except TimeoutError as exc:
        lttng = agent.get("/capabilities").json().get("lttng")
        raise AssertionError(f"{exc}\nthe agent's /capabilities lttng: {lttng}") from None
    r = agent.post(
        "/lttng/sessions",
        json={"events": [{"domain": "python", "names": ["tracecar.demo"]}]},
    )
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    try:
        assert agent.post(f"/lttng/sessions/{sid}/start").status_code in (200, 202, 204)
        time.sleep(2)  # the logger logs every 200 ms
        assert agent.post(f"/lttng/sessions/{sid}/stop").status_code in (200, 202, 204)
        r = agent.get(f"/lttng/sessions/{sid}/events", params={"format": "json"})
        assert r.status_code == 200, r.text
        events = [json.loads(line) for line in r.text.splitlines() if line.strip()]
        assert events, "no events captured"
        ticks = [
            e
            for e in events
            if e.get("name") == "lttng_python:event"
            and e.get("fields", {}).get("logger_name") == "tracecar.demo"
            and "tick" in str(e.get("fields", {}).get("msg"))
        ]
        # one record every 200 ms for 2 s, from a process in another container
        assert len(ticks) >= 3, json.dumps(events[:3])
    finally:
        agent.delete(f"/lttng/sessions/{sid}")


def test_nothing_left_behind_in_the_pod(agent: httpx.Client) -> None:
    # Runs last (file order): every recording and probe above has ended, so no tracer
    # may be left running in the pod.
    tracers = [p for p in _processes(agent) if p["comm"] in {"perf", "bpftrace"}]
    assert tracers == [], tracers
