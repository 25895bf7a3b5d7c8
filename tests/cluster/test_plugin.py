"""`kubectl tracecar` on the real cluster, found by kubectl as a plugin on PATH:
attach to a running unlabelled pod (no restart), profile and probe it through the
plugin, refuse what an attached agent cannot do, profile a three-replica Deployment
into one merged graph, work the same on an injected pod (LTTng, a Python stack snapshot
and a Python function counted through USDT), and end an idle agent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import kube as K
from tests.cluster.plugin_cli import ok, plugin_env, tracecar

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

HOT = "tracecar_demo_hot"


@pytest.fixture(scope="module")
def plain(installed: K.Kube) -> dict[str, Any]:
    """A running pod the webhook never saw (no label): what `attach` is for."""
    deploy = K.demo_deployment("plain", labelled=False, logger=False)
    # An ephemeral container has no resources of its own: the attached agent (~60 MB of
    # RSS) counts against the pod's limit, which the app's 64Mi alone would not fit
    # (docs/plugin.md says so to users).
    burner = deploy["spec"]["template"]["spec"]["containers"][0]
    burner["resources"]["limits"]["memory"] = "192Mi"
    installed.apply(deploy)
    return K.ready_pods(installed, "plain")[0]


def test_attach_to_a_running_pod_without_restarting_it(
    installed: K.Kube, plain: dict[str, Any]
) -> None:
    name = plain["metadata"]["name"]
    before = installed.pod(name)
    out = json.loads(ok(tracecar(installed, "attach", name, "-c", "burner", "-o", "json")))
    assert out["added"] is True and out["container"].startswith("tracecar-agent-")
    after = installed.pod(name)
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    restarts = {s["name"]: s["restartCount"] for s in after["status"]["containerStatuses"]}
    assert restarts == {s["name"]: s["restartCount"] for s in before["status"]["containerStatuses"]}
    eph = after["spec"]["ephemeralContainers"][0]
    assert eph["targetContainerName"] == "burner"
    assert "privileged" not in eph["securityContext"]
    # idempotent: the running agent is used, none added
    again = json.loads(ok(tracecar(installed, "attach", name, "-o", "json")))
    assert again["added"] is False
    status = json.loads(ok(tracecar(installed, "status", name, "-o", "json")))
    assert status["agent"] == "attached"
    assert status["capabilities"]["mode"]["mode"] == "attached"
    assert status["capabilities"]["lttng"]["available"] is False


def test_ps_names_the_containers_of_an_unmutated_pod(
    installed: K.Kube, plain: dict[str, Any]
) -> None:
    out = json.loads(ok(tracecar(installed, "ps", plain["metadata"]["name"], "-o", "json")))
    comms = {(p["container"], p["comm"]) for p in out["processes"]}
    assert ("burner", "burner") in comms, comms


def test_profile_the_attached_pod(installed: K.Kube, plain: dict[str, Any], tmp_path: Path) -> None:
    svg = tmp_path / "flame.svg"
    name = plain["metadata"]["name"]
    res = tracecar(installed, "profile", name, "-c", "burner", "-d", "3s", "-o", str(svg))
    ok(res)
    assert HOT in svg.read_text()
    assert "samples ->" in res.stdout and "%" in res.stderr  # a summary and progress


def test_probe_the_attached_pod(installed: K.Kube, plain: dict[str, Any]) -> None:
    name = plain["metadata"]["name"]
    res = tracecar(
        installed, "probe", name, "-c", "burner", "--function", HOT, "--args", "int",
        "--retval", "-d", "3s",
    )  # fmt: skip
    hits = [line for line in ok(res).splitlines() if line.startswith("pid=")]
    assert hits and "retval=" in hits[0] and "arg0=" in hits[0], res.stdout[-2000:]
    hist = tracecar(
        installed, "probe", name, "-c", "burner", "--function", HOT, "--histogram", "latency",
        "-d", "3s",
    )  # fmt: skip
    assert "|@" in ok(hist), hist.stdout


def test_stack_snapshot_of_the_attached_pod(installed: K.Kube, plain: dict[str, Any]) -> None:
    """What is it doing right now: the burner's native stack, from the image's gdb."""
    name = plain["metadata"]["name"]
    text = ok(tracecar(installed, "stack", name, "-c", "burner"))
    assert "main" in text, text[-2000:]
    snap = json.loads(ok(tracecar(installed, "stack", name, "-c", "burner", "-o", "json")))
    functions = [f["function"] for t in snap["threads"] for f in t["frames"]]
    assert snap["tool"] == "gdb" and "main" in functions, snap
    assert not [p for p in K.pod_processes(plain["metadata"]["uid"]) if p.endswith(" gdb")]


def _tracers(uid: str) -> list[str]:
    """perf and bpftrace processes of the pod (its cgroup), not of anything else here."""
    return [p for p in K.pod_processes(uid) if p.split(" ", 1)[1] in ("perf", "bpftrace")]


def test_ctrl_c_ends_a_probe_and_removes_it(installed: K.Kube, plain: dict[str, Any]) -> None:
    env = plugin_env(installed)
    uid = plain["metadata"]["uid"]
    proc = subprocess.Popen(
        ["kubectl", "tracecar", "-n", K.NS, "probe", plain["metadata"]["name"], "-c", "burner",
         "--function", HOT],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("pid="), first + (proc.stderr.read() if proc.stderr else "")
        assert _tracers(uid), "no tracer runs for the probe"
        # what a terminal's Ctrl-C does: SIGINT to the whole foreground process group
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopping the probe" in err and "Traceback" not in err, err
    K.wait_until(
        lambda: (
            subprocess.run(["pgrep", "-x", "bpftrace|perf"], capture_output=True).returncode != 0
        ),
        30,
        "the tracer gone after Ctrl-C",
    )


def test_what_an_attached_agent_cannot_do_is_said(installed: K.Kube, plain: dict[str, Any]) -> None:
    res = tracecar(installed, "trace", plain["metadata"]["name"], "--python", "x", "-d", "1s")
    assert res.returncode == 6, res.stderr
    assert "profiling=enabled" in res.stderr and "Traceback" not in res.stderr


def test_clear_errors_and_exit_codes(installed: K.Kube, plain: dict[str, Any]) -> None:
    missing = tracecar(installed, "attach", "no-such-pod")
    assert missing.returncode == 3 and "not found" in missing.stderr, missing.stderr
    wrong_c = tracecar(installed, "attach", plain["metadata"]["name"], "-c", "nope")
    assert wrong_c.returncode == 3 and "burner" in wrong_c.stderr, wrong_c.stderr
    usage = tracecar(installed, "profile", "svc/x")
    assert usage.returncode == 2 and "unsupported resource type" in usage.stderr


def test_missing_rbac_names_the_verb_and_resource(installed: K.Kube, plain: dict[str, Any]) -> None:
    # A user who may look at pods but not add containers to them.
    for m in (
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "viewer", "namespace": K.NS}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "pod-viewer", "namespace": K.NS},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "viewer", "namespace": K.NS},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": "pod-viewer"},
            "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": K.NS}],
        },
    ):  # fmt: skip
        installed.apply(m)
    viewer = f"--as=system:serviceaccount:{K.NS}:viewer"
    pod = plain["metadata"]["name"]
    # a fresh attach (the running one would be reused): a container of a pod we create
    installed.apply(K.bare_pod("rbac-target", labelled=False))
    installed.run("wait", "-n", K.NS, "--for=condition=Ready", "pod/rbac-target",
                  "--timeout=120s", timeout=150)  # fmt: skip
    denied = tracecar(installed, viewer, "attach", "rbac-target")
    assert denied.returncode == 4, denied.stderr
    assert "patch" in denied.stderr and "pods/ephemeralcontainers" in denied.stderr
    forward = tracecar(installed, viewer, "ps", pod)
    assert forward.returncode == 4 and "pods/portforward" in forward.stderr, forward.stderr
    installed.run("delete", "pod/rbac-target", "-n", K.NS, "--wait=false", check=False)


def test_pod_security_refusal_of_an_attach_says_why(installed: K.Kube) -> None:
    ns = "tracecar-plugin-baseline"
    installed.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"pod-security.kubernetes.io/enforce": "baseline"}},
        }
    )
    try:
        installed.apply(K.bare_pod("quiet", ns=ns, labelled=False))
        installed.run("wait", "-n", ns, "--for=condition=Ready", "pod/quiet", "--timeout=120s",
                      timeout=150)  # fmt: skip
        res = subprocess.run(
            ["kubectl", "tracecar", "-n", ns, "attach", "quiet"],
            capture_output=True, text=True, timeout=120, env=plugin_env(installed),
        )  # fmt: skip
        assert res.returncode == 4, res.stderr
        assert "Pod Security" in res.stderr and "privileged" in res.stderr, res.stderr
    finally:
        installed.run("delete", "namespace", ns, "--wait=false", check=False)


def test_profile_three_replicas_into_one_merged_graph(installed: K.Kube, tmp_path: Path) -> None:
    installed.apply(K.demo_deployment("trio", replicas=3, logger=False))
    pods = K.ready_pods(installed, "trio", n=3)
    svg = tmp_path / "trio.svg"
    res = tracecar(installed, "profile", "-l", "app=trio", "-c", "burner", "-d", "3s",
                   "-o", str(svg), "--json")  # fmt: skip
    report = json.loads(ok(res))
    assert report["failed"] == {}
    assert (
        sorted(report["pods"]) == sorted(p["metadata"]["name"] for p in pods)[:3]
        or len(report["pods"]) >= 3
    )
    assert HOT in svg.read_text()
    for pod in report["pods"].values():
        assert HOT in Path(pod["file"]).read_text()
    # an injected pod answers the same commands
    status = json.loads(ok(tracecar(installed, "status", "deploy/trio", "-o", "json")))
    assert status["agent"] == "injected"
    installed.run("delete", "deploy/trio", "-n", K.NS, "--wait=false", check=False)


def test_trace_an_injected_pod_through_the_plugin(installed: K.Kube, tmp_path: Path) -> None:
    installed.apply(K.demo_deployment("traced"))
    name = K.ready_pods(installed, "traced")[0]["metadata"]["name"]
    K.wait_until(
        lambda: (
            "registered"
            in installed.run("logs", "-n", K.NS, name, "-c", "logger", check=False).stdout
        ),
        60,
        "the demo logger registered with the sidecar's session daemon",
    )
    out = tmp_path / "trace.tar.gz"
    res = tracecar(installed, "trace", name, "--python", "tracecar.demo", "-d", "3s",
                   "-o", str(out))  # fmt: skip
    ok(res)
    assert out.stat().st_size > 1000 and out.read_bytes()[:2] == b"\x1f\x8b"
    events = tracecar(installed, "trace", name, "--python", "tracecar.demo", "-d", "3s",
                      "--events")  # fmt: skip
    assert "tracecar.demo" in ok(events) and "tick" in events.stdout
    # The logger is Debian's python3 (USDT probes built in): what it is doing now, from
    # the image's py-spy; how often logging's `info` runs, from its function__return probe.
    snap = json.loads(ok(tracecar(installed, "stack", name, "-c", "logger", "-o", "json")))
    frames = [f for t in snap["threads"] for f in t["frames"]]
    assert snap["tool"] == "py-spy", snap
    assert any(f["function"] == "main" and "logger.py" in (f["file"] or "") for f in frames)
    args = ["probe", name, "-c", "logger", "--python-function", "info", "--count", "-d", "3s"]
    counted = json.loads(ok(tracecar(installed, *args, "--json")))
    assert counted["hits"] >= 5, counted  # one log.info every 200 ms
    installed.run("delete", "deploy/traced", "-n", K.NS, "--wait=false", check=False)


def test_an_idle_attached_agent_ends_itself(installed: K.Kube) -> None:
    installed.apply(K.bare_pod("sleepy", labelled=False))
    installed.run("wait", "-n", K.NS, "--for=condition=Ready", "pod/sleepy", "--timeout=120s",
                  timeout=150)  # fmt: skip
    out = json.loads(
        ok(tracecar(installed, "attach", "sleepy", "--idle-timeout", "5s", "-o", "json"))
    )

    def ended() -> bool:
        pod = installed.pod("sleepy")
        for s in pod["status"].get("ephemeralContainerStatuses", []):
            if s["name"] == out["container"] and "terminated" in s["state"]:
                return True
        return False

    K.wait_until(ended, 90, "the idle attached agent to exit")
    assert installed.pod("sleepy")["status"]["containerStatuses"][0]["restartCount"] == 0
    # a later attach adds a fresh agent under a new name
    fresh = json.loads(ok(tracecar(installed, "attach", "sleepy", "-o", "json")))
    assert fresh["added"] is True and fresh["container"] != out["container"]
    installed.run("delete", "pod/sleepy", "-n", K.NS, "--wait=false", check=False)
