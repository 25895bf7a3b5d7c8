"""The end-to-end stage on a real cluster (`scripts/test cluster`), as a user does it:
`kubectl apply -k deploy/`, a labelled Deployment, `kubectl port-forward`, the README's
requests, classic mode, a webhook outage, certificate renewal under load, and nothing
left on the node after the pod is gone. Tests run in file order and share the cluster."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.probes._perfprobe import group_name
from devcluster._layout import EGRESS_CHAIN
from tests.cluster import kube as K

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

HOT = "tracecar_demo_hot"
DEMO = "demo"


def _ready_pod(kube: K.Kube, app: str) -> dict[str, Any]:
    return K.ready_pods(kube, app)[0]


def test_install_with_kubectl_apply_k(installed: K.Kube) -> None:
    kube = installed
    secret = kube.json("get", "secret", "-n", "tracecar-system", "tracecar-webhook-tls")
    assert {"tls.crt", "tls.key", "ca.crt"} <= set(secret["data"]), secret["data"].keys()
    hook = kube.json("get", "mutatingwebhookconfiguration", "tracecar")
    bundle = hook["webhooks"][0]["clientConfig"].get("caBundle", "")
    assert base64.b64decode(bundle).startswith(b"-----BEGIN CERTIFICATE-----")
    deploy = kube.json("get", "deploy", "-n", "tracecar-system", "tracecar-webhook")
    assert deploy["status"].get("readyReplicas") == 2, deploy["status"]


def test_up_again_reuses_the_healthy_cluster(installed: K.Kube) -> None:
    # `scripts/cluster up` is idempotent: on a healthy cluster it changes nothing (the
    # installed tracecar stays), and `status -o json` says every component is running.
    start = time.monotonic()
    up = subprocess.run(
        [str(K.REPO / "scripts" / "cluster"), "up"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=K.REPO,
    )
    assert up.returncode == 0 and "reusing it" in up.stderr, up.stderr
    assert time.monotonic() - start < 60
    st = subprocess.run(
        [str(K.REPO / "scripts" / "cluster"), "status", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=K.REPO,
    )
    assert st.returncode == 0, st.stdout + st.stderr
    body = json.loads(st.stdout)
    assert body["healthy"] is True and body["components"]["node"] == "Ready", st.stdout
    deploy = installed.json("get", "deploy", "-n", "tracecar-system", "tracecar-webhook")
    assert deploy["status"].get("readyReplicas") == 2


@pytest.fixture(scope="module")
def demo_pod(installed: K.Kube) -> dict[str, Any]:
    installed.apply(K.demo_deployment(DEMO))
    return _ready_pod(installed, DEMO)


def test_labelled_deployment_gets_a_native_sidecar(
    installed: K.Kube, demo_pod: dict[str, Any]
) -> None:
    init = {c["name"]: c for c in demo_pod["spec"].get("initContainers", [])}
    assert K.AGENT in init, demo_pod["spec"]
    assert init[K.AGENT].get("restartPolicy") == "Always"
    assert init[K.AGENT]["image"] == K.AGENT_IMAGE
    assert demo_pod["spec"]["shareProcessNamespace"] is True
    status = json.loads(demo_pod["metadata"]["annotations"]["tracecar.dev/status"])
    assert status["mode"] == "native", status
    # started before the app: the sidecar's start time precedes the app containers'
    states = {s["name"]: s for s in demo_pod["status"].get("initContainerStatuses", [])}
    assert states[K.AGENT]["started"] is True
    started = {
        s["name"]: s["state"]["running"]["startedAt"]
        for s in demo_pod["status"]["containerStatuses"]
    }
    assert states[K.AGENT]["state"]["running"]["startedAt"] <= min(started.values())


def test_unlabelled_pod_is_untouched(installed: K.Kube) -> None:
    installed.apply(K.bare_pod("plain", labelled=False))
    pod = installed.pod("plain")
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app"]
    assert "initContainers" not in pod["spec"]
    assert "tracecar.dev/status" not in pod["metadata"].get("annotations", {})
    installed.run("delete", "pod", "plain", "-n", K.NS, "--wait=false")


def test_baseline_namespace_rejects_the_injected_pod(installed: K.Kube) -> None:
    installed.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": "tracecar-baseline",
                "labels": {"pod-security.kubernetes.io/enforce": "baseline"},
            },
        }
    )
    out = installed.run(
        "apply",
        "-f",
        "-",
        stdin=json.dumps(K.bare_pod("rejected", ns="tracecar-baseline")),
        check=False,
    )
    assert out.returncode != 0
    # docs/install.md: Pod Security is checked after mutation, the capabilities are why
    assert "violates PodSecurity" in out.stderr, out.stderr
    assert "baseline" in out.stderr and "SYS_ADMIN" in out.stderr, out.stderr


def test_server_side_dry_run_of_a_labelled_pod(installed: K.Kube) -> None:
    out = installed.run(
        "apply", "--dry-run=server", "-o", "json", "-f", "-", stdin=json.dumps(K.bare_pod("dry"))
    )
    pod = json.loads(out.stdout)
    assert K.AGENT in K.containers(pod)
    assert installed.run("get", "pod", "dry", "-n", K.NS, check=False).returncode != 0


@pytest.fixture(scope="module")
def agent(installed: K.Kube, demo_pod: dict[str, Any]) -> Any:
    name = demo_pod["metadata"]["name"]
    with (
        K.agent_forward(installed, name) as url,
        httpx.Client(base_url=url, timeout=60, headers=K.auth(demo_pod)) as client,
    ):
        yield client


def _burner(agent: httpx.Client) -> int:
    body = agent.get("/processes").json()
    procs = body["processes"] if isinstance(body, dict) else body
    return int(next(p for p in procs if p["comm"] == "burner")["pid"])


def test_port_forward_processes_by_container(agent: httpx.Client) -> None:
    r = agent.get("/processes")
    assert r.status_code == 200, r.text
    body = r.json()
    procs = body["processes"] if isinstance(body, dict) else body
    by: dict[str, set[str]] = {}
    for p in procs:
        by.setdefault(str(p["container"]), set()).add(str(p["comm"]))
    assert "burner" in by.get("burner", set()), by
    assert any(c.startswith("python") for c in by.get("logger", set())), by


def test_the_pods_other_containers_are_refused(
    agent: httpx.Client, installed: K.Kube, demo_pod: dict[str, Any]
) -> None:
    # issue 13: the app containers share the agent's loopback but not its token
    probe = (
        "import urllib.request, urllib.error\n"
        "try:\n"
        "    urllib.request.urlopen('http://127.0.0.1:7780/processes', timeout=10)\n"
        "    print('served')\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code)\n"
    )
    name = demo_pod["metadata"]["name"]
    out = installed.run("exec", "-n", K.NS, name, "-c", "logger", "--", "python3", "-c", probe)
    assert out.stdout.strip() == "401", out.stdout + out.stderr
    bare = httpx.get(agent.base_url.join("/processes"), timeout=30)
    assert bare.status_code == 401 and "token" in bare.json()["detail"]
    assert agent.get("/processes").status_code == 200  # the port-forwarded user, with it


def _egress_drops() -> int:
    out = subprocess.run(
        ["iptables", "-w", "-nvxL", EGRESS_CHAIN],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return sum(int(ln.split()[0]) for ln in out.splitlines() if " DROP " in f" {ln} ")


def _default_gateway() -> str:
    route = subprocess.run(
        ["ip", "-4", "route", "show", "default"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    return route[route.index("via") + 1] if "via" in route else "192.0.2.1"


def test_pods_send_nothing_out_of_the_machine(installed: K.Kube, demo_pod: dict[str, Any]) -> None:
    # issue 8: the cluster uses its own veth and bridge only. A pod's packet for an
    # address beyond this machine is dropped at the node (counted by our DROP rule),
    # and a DNS lookup fails at once on the pod's loopback instead of going to the
    # host's nameserver.
    probe = (
        "import socket, sys, time\n"
        "print(open('/etc/resolv.conf').read().split())\n"
        "t = time.monotonic()\n"
        "try:\n"
        "    socket.getaddrinfo('example.com', 80)\n"
        "    print('resolved')\n"
        "except OSError:\n"
        "    print('no-dns', round(time.monotonic() - t, 1))\n"
        "try:\n"
        "    socket.create_connection((sys.argv[1], 80), timeout=2)\n"
        "    print('connected')\n"
        "except OSError:\n"
        "    print('no-route')\n"
    )
    before = _egress_drops()
    name = demo_pod["metadata"]["name"]
    out = installed.run(
        "exec",
        "-n",
        K.NS,
        name,
        "-c",
        "logger",
        "--",
        "python3",
        "-c",
        probe,
        _default_gateway(),
    )
    lines = out.stdout.splitlines()
    assert "'127.0.0.1'" in lines[0], out.stdout
    assert lines[1].startswith("no-dns") and float(lines[1].split()[1]) < 5, out.stdout
    assert lines[2] == "no-route", out.stdout
    assert _egress_drops() > before


def test_port_forward_flame_graph(agent: httpx.Client) -> None:
    # the README's curl line: a container's profile, answered as the SVG
    r = agent.post(
        "/profiles",
        params={"wait": "true", "format": "svg"},
        json={"container": "burner", "duration_s": 3},
    )
    assert r.status_code == 200, r.text
    assert "svg" in r.headers["content-type"]
    assert HOT in r.text


def test_port_forward_uprobe_with_args_and_retval(agent: httpx.Client) -> None:
    pid = _burner(agent)
    r = agent.post(
        "/probes",
        json={
            "pid": pid,
            "function": HOT,
            "mode": "events",
            "args": ["int"],
            "retval": True,
            "duration_s": 2,
        },
    )
    assert r.status_code == 201, r.text
    pid_ = r.json()["id"]
    try:
        deadline = time.monotonic() + 40
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            state = agent.get(f"/probes/{pid_}").json()
            if state.get("state") in {"finished", "failed"}:
                break
            time.sleep(0.5)
        assert state.get("state") == "finished", state
        assert int(state["hits"]) > 0, state
        events = agent.get(f"/probes/{pid_}/events")
        assert events.status_code == 200, events.text
        first = json.loads(events.text.splitlines()[0])
        assert "retval" in json.dumps(first), first
    finally:
        agent.delete(f"/probes/{pid_}")


def test_port_forward_lttng_session_and_trace(
    agent: httpx.Client, installed: K.Kube, demo_pod: dict[str, Any]
) -> None:
    name = demo_pod["metadata"]["name"]
    K.wait_until(
        lambda: (
            "registered"
            in installed.run("logs", "-n", K.NS, name, "-c", "logger", check=False).stdout
        ),
        30,
        "the demo logger registered with the sidecar's session daemon (at its start)",
    )
    # At its first start: with a 5 s wait for the daemon, a sidecar that came up after
    # the app would have made the logger exit and restart.
    statuses = installed.pod(name)["status"]["containerStatuses"]
    assert {s["name"]: s["restartCount"] for s in statuses}.get("logger") == 0, statuses
    r = agent.post(
        "/lttng/sessions", json={"events": [{"domain": "python", "names": ["tracecar.demo"]}]}
    )
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    try:
        assert agent.post(f"/lttng/sessions/{sid}/start").status_code in (200, 202, 204)
        time.sleep(2)
        assert agent.post(f"/lttng/sessions/{sid}/stop").status_code in (200, 202, 204)
        ev = agent.get(f"/lttng/sessions/{sid}/events", params={"format": "json"})
        assert ev.status_code == 200, ev.text
        ticks = [ln for ln in ev.text.splitlines() if "tracecar.demo" in ln and "tick" in ln]
        assert len(ticks) >= 3, ev.text[:2000]
        trace = agent.get(f"/lttng/sessions/{sid}/trace")
        assert trace.status_code == 200, trace.text[:500]
        assert len(trace.content) > 1000
    finally:
        agent.delete(f"/lttng/sessions/{sid}")


def test_classic_sidecar_mode(installed: K.Kube) -> None:
    installed.apply(
        K.demo_deployment(
            "classic", annotations={"tracecar.dev/native-sidecar": "false"}, lttng_wait_s=300
        )
    )
    pod = _ready_pod(installed, "classic")
    assert K.AGENT in {c["name"] for c in pod["spec"]["containers"]}
    with K.agent_forward(installed, pod["metadata"]["name"]) as url:
        procs = httpx.get(f"{url}/processes", timeout=30, headers=K.auth(pod))
        assert procs.status_code == 200, procs.text
        assert "burner" in procs.text
    installed.run("delete", "deploy", "classic", "-n", K.NS, "--wait=false")


def test_webhook_outage_does_not_block_pods(installed: K.Kube) -> None:
    kube = installed
    kube.run("scale", "-n", "tracecar-system", "deploy/tracecar-webhook", "--replicas=0")
    K.wait_until(
        lambda: (
            not kube.json(
                "get",
                "pods",
                "-n",
                "tracecar-system",
                "-l",
                "app.kubernetes.io/name=tracecar-webhook",
            )["items"]
        ),
        90,
        "the webhook's pods gone",
    )
    try:
        start = time.monotonic()
        kube.apply(K.bare_pod("during-outage"))
        took = time.monotonic() - start
        pod = kube.pod("during-outage")
        assert K.AGENT not in K.containers(pod)
        # failurePolicy Ignore, timeoutSeconds 5: admitted unchanged rather than refused or
        # left hanging (the bound leaves room for kubectl's own start on a loaded node).
        assert took < 30, took
        kube.run(
            "wait",
            "-n",
            K.NS,
            "--for=condition=Ready",
            "pod/during-outage",
            "--timeout=90s",
            timeout=100,
        )
    finally:
        kube.run("scale", "-n", "tracecar-system", "deploy/tracecar-webhook", "--replicas=2")
        K.webhook_rolled_out(kube)
        kube.run("delete", "pod", "during-outage", "-n", K.NS, "--wait=false")


def _serving_cert(kube: K.Kube) -> set[bytes]:
    """The certificate each webhook replica serves right now, read off its TLS port."""
    pods = kube.json(
        "get", "pods", "-n", "tracecar-system", "-l", "app.kubernetes.io/name=tracecar-webhook"
    )["items"]
    certs = set()
    for p in pods:
        ip = p["status"].get("podIP")
        if not ip or p["metadata"].get("deletionTimestamp"):
            continue
        port = (
            next(
                cp["containerPort"]
                for c in p["spec"]["containers"]
                for cp in c.get("ports", [])
                if cp.get("name") in {"https", "webhook"}
            )
            if any(c.get("ports") for c in p["spec"]["containers"])
            else 8443
        )
        certs.add(ssl.get_server_certificate((ip, port)).encode())
    return certs


def test_certificate_renewal_under_load(installed: K.Kube) -> None:
    kube = installed
    before = _serving_cert(kube)
    assert before
    stop = threading.Event()
    created: list[str] = []
    errors: list[str] = []

    def loop() -> None:
        # Server-side dry-run creates: every one goes through admission (the webhook
        # mutates it) without 2 cores having to run hundreds of pods.
        i = 0
        while not stop.is_set():
            name = f"renew-{i}"
            res = kube.run(
                "create",
                "--dry-run=server",
                "-o",
                "json",
                "-f",
                "-",
                stdin=json.dumps(K.bare_pod(name)),
                check=False,
            )
            if res.returncode != 0:
                errors.append(res.stderr)
            elif K.AGENT not in K.containers(json.loads(res.stdout)):
                # failurePolicy Ignore hides a failed call as a pod without the agent
                errors.append(f"{name}: admitted without the agent")
            else:
                created.append(name)
            i += 1
            time.sleep(0.1)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        job = kube.json("get", "cronjob", "-n", "tracecar-system", "tracecar-certs-renew")["spec"][
            "jobTemplate"
        ]
        job["spec"]["template"]["spec"]["containers"][0]["args"].append("--rotate")
        kube.apply(
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": "rotate-now", "namespace": "tracecar-system"},
                "spec": job["spec"],
            }
        )
        kube.run(
            "wait",
            "-n",
            "tracecar-system",
            "--for=condition=complete",
            "job/rotate-now",
            "--timeout=240s",
            timeout=250,
        )
        # the kubelet refreshes the Secret volume (sync period + cache), the webhook
        # reloads on the symlink swap: no restart
        K.wait_until(
            lambda: _serving_cert(kube).isdisjoint(before),
            150,
            "the webhook serving the renewed certificate",
        )
        time.sleep(3)
    finally:
        stop.set()
        t.join(timeout=60)
    assert not errors, errors[:3]
    assert len(created) >= 5, created
    restarts = [
        s["restartCount"]
        for p in kube.json(
            "get", "pods", "-n", "tracecar-system", "-l", "app.kubernetes.io/name=tracecar-webhook"
        )["items"]
        for s in p["status"]["containerStatuses"]
    ]
    assert set(restarts) == {0}, restarts


def _tracefs_uprobes() -> str:
    for p in (
        Path("/sys/kernel/tracing/uprobe_events"),
        Path("/sys/kernel/debug/tracing/uprobe_events"),
    ):
        if p.exists():
            return p.read_text()
    return ""


def test_deleting_the_pod_leaves_nothing_on_the_node(
    installed: K.Kube, demo_pod: dict[str, Any]
) -> None:
    # a perf probe, a bpftrace probe, a long recording and an LTTng session still running
    # when the pod goes away (a fresh port-forward: the module's may have idled out by now)
    name = demo_pod["metadata"]["name"]
    with (
        K.agent_forward(installed, name) as url,
        httpx.Client(base_url=url, timeout=60, headers=K.auth(demo_pod)) as agent,
    ):
        pid = _burner(agent)
        for backend in ("perf-probe", "bpftrace"):
            r = agent.post(
                "/probes",
                json={
                    "pid": pid,
                    "function": HOT,
                    "mode": "count",
                    "duration_s": 300,
                    "backend": backend,
                },
            )
            assert r.status_code == 201, r.text
        r = agent.post("/profiles", json={"pid": pid, "duration_s": 300})
        assert r.status_code in (201, 202), r.text
        # and an LTTng session recording: its session and consumer daemons must go too
        r = agent.post(
            "/lttng/sessions", json={"events": [{"domain": "python", "names": ["tracecar.demo"]}]}
        )
        assert r.status_code == 201, r.text
        started = agent.post(f"/lttng/sessions/{r.json()['id']}/start")
        assert started.status_code in (200, 202, 204), started.text
        time.sleep(2)
        assert f"{group_name(demo_pod['metadata']['uid'])}/" in _tracefs_uprobes(), (
            "the perf probe is not in tracefs"
        )
    installed.run("delete", "deploy", DEMO, "-n", K.NS, "--wait=false")
    K.wait_until(
        lambda: installed.run("get", "pod", name, "-n", K.NS, check=False).returncode != 0,
        120,
        "the demo pod deleted",
    )

    uid = demo_pod["metadata"]["uid"]
    group = group_name(uid)  # the agent's perf-probe event group: derived from the pod UID

    def left() -> list[str]:
        # Other pods' agents keep their own session daemons (and this machine may run
        # other tracers): what must be gone is every process of this pod (its agent's
        # perf, bpftrace and session daemon among them) and every tracecar uprobe.
        uprobes = [e for e in _tracefs_uprobes().splitlines() if f"{group}/" in e]
        return K.pod_processes(uid) + uprobes

    K.wait_until(
        lambda: not left(), 60, "nothing of the pod left on the node", lambda: "\n".join(left())
    )
