"""`kubectl tracecar attach`'s semantics in podman, for the fast stage: the agent
container the plugin renders (kubectl_tracecar._attach, the same spec the cluster gets
as an ephemeral container) joins a running, unmutated pod's app container's PID
namespace and the pod's network namespace, nothing restarts, and the agent works as
an attached one: processes named by container, a profile of the app, LTTng refused
with the way out, and an idle agent ending itself. The real ephemeral-container path
(the API, the kubelet) is proved by the cluster stage (tests/cluster/test_plugin.py)."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kubectl_tracecar import _attach
from tests.e2e import realpod

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

HOT = "tracecar_demo_hot"


@pytest.fixture(scope="module")
def plain(images: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[realpod.RealPod]:
    """The demo pod as its owner runs it: no label, no webhook, no agent."""
    pod = realpod.demo_pod(f"tracecar-plain-{secrets.token_hex(3)}")
    pod["metadata"]["labels"].pop("profiling", None)
    with realpod.kube_play(pod, tmp_path_factory.mktemp("plain")) as real:
        realpod.wait_until(
            lambda: real.states().get("burner") == "running", 60, "the plain pod's burner"
        )
        yield real


def _run_attached(
    pod: realpod.RealPod, *, idle_s: float, earlier: list[dict[str, Any]] | None = None
) -> tuple[str, int, str, dict[str, Any]]:
    """`podman run` of the rendered ephemeral container: (name, port, token)."""
    burner = pod.container("burner")
    cid = realpod.podman("inspect", "-f", "{{.Id}}", burner)
    token = secrets.token_urlsafe(24)
    suffix = secrets.token_hex(3)
    spec = _attach.render(
        {
            "spec": {
                "containers": [{"name": "burner"}, {"name": "logger"}],
                "ephemeralContainers": earlier or [],
            }
        },
        options=_attach.AttachOptions(
            image=realpod.AGENT_IMAGE,
            target="burner",
            token=token,
            suffix=suffix,
            idle_exit_s=idle_s,
            container_names={cid: "burner"},
        ),
    )
    name = f"{pod.name}-{spec['name']}"
    args = ["run", "-d", "--name", name, "--ulimit", "host", "--user", "0"]
    # the pod's network namespace and targetContainerName's PID one, as the kubelet does it
    args += ["--pod", pod.name, f"--pid=container:{burner}"]
    for cap in spec["securityContext"]["capabilities"]["add"]:
        args += ["--cap-add", cap]
    for env in spec["env"]:
        if "value" in env:  # the downward-API ones (pod name, uid) have no podman twin
            args += ["-e", f"{env['name']}={env['value']}"]
    args += ["--entrypoint", spec["command"][0], spec["image"], *spec["command"][1:]]
    realpod.podman(*args)
    port = int(next(e["value"] for e in spec["env"] if e["name"] == "TRACECAR_AGENT_PORT"))
    return name, port, token, spec


@pytest.fixture(scope="module")
def first(plain: realpod.RealPod) -> Iterator[tuple[str, int, str, dict[str, Any]]]:
    started = _run_attached(plain, idle_s=600)
    try:
        yield started
    finally:
        realpod.podman("rm", "-f", "-t", "5", started[0], check=False, timeout=60)


@pytest.fixture(scope="module")
def attached(
    plain: realpod.RealPod, first: tuple[str, int, str, dict[str, Any]]
) -> Iterator[httpx.Client]:
    name, port, token, _ = first
    with realpod.port_forward(plain, port) as url:
        client = httpx.Client(
            base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"}
        )

        def healthy() -> bool:
            try:
                return client.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        try:
            realpod.wait_until(healthy, 60, "the attached agent's /healthz", name)
            yield client
        finally:
            client.close()


def test_attached_agent_sees_the_app_by_its_container_name(
    attached: httpx.Client, plain: realpod.RealPod
) -> None:
    procs: list[dict[str, Any]] = attached.get("/processes").json()
    burner = [p for p in procs if p["comm"] == "burner"]
    assert burner and burner[0]["container"] == "burner", procs
    assert burner[0]["pid"] == 1  # the target container's PID namespace: its init is pid 1
    assert plain.states()["burner"] == "running"  # nothing restarted


def test_attached_agent_refuses_a_request_without_the_token(
    attached: httpx.Client, plain: realpod.RealPod, first: tuple[str, int, str, dict[str, Any]]
) -> None:
    _, port, token, _ = first
    # A user through the port-forward without the token: refused, with how to get it.
    r = httpx.get(str(attached.base_url.join("/processes")), timeout=30)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
    assert "Authorization: Bearer <token>" in r.json()["detail"] and token not in r.text
    assert attached.get("/processes").status_code == 200  # the same, with the token
    # The app's other container shares the pod's loopback with the attached agent: the
    # same refusal there, and served once it has the token.
    url = f"http://127.0.0.1:{port}/processes"
    out = realpod.call_agent(plain, "logger", url, token="")
    assert out.startswith("401 "), out
    assert "Authorization: Bearer <token>" in out and "kubectl get pod" in out, out
    assert token not in out
    served = realpod.call_agent(plain, "logger", url, token=token)
    assert served.startswith("200 ") and '"burner"' in served, served[:2000]


def test_attached_agent_profiles_the_app(attached: httpx.Client) -> None:
    r = attached.post(
        "/profiles",
        params={"wait": "true", "format": "folded"},
        json={"container": "burner", "duration_s": 3},
    )
    assert r.status_code == 200, r.text
    assert HOT in r.text


def test_attached_agent_refuses_lttng_with_the_way_out(attached: httpx.Client) -> None:
    caps = attached.get("/capabilities").json()
    assert caps["mode"]["mode"] == "attached"
    assert caps["lttng"]["available"] is False
    r = attached.post("/lttng/sessions", json={"events": [{"domain": "python"}]})
    assert r.status_code == 409, r.text
    assert "profiling=enabled" in r.json()["detail"]


def test_an_idle_attached_agent_ends_itself(
    plain: realpod.RealPod, first: tuple[str, int, str, dict[str, Any]]
) -> None:
    # a second agent beside the first: the next free port, as `attach` picks it
    name, port, _, _ = _run_attached(plain, idle_s=3, earlier=[first[3]])
    assert port != first[1]
    try:
        deadline = time.monotonic() + 60
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            state = json.loads(realpod.podman("inspect", "-f", "{{json .State}}", name))
            if state.get("Status") == "exited":
                break
            time.sleep(1)
        assert state.get("Status") == "exited", state
        logs = subprocess.run(
            ["podman", "logs", name], capture_output=True, text=True, env=realpod.podman_env()
        )
        assert state.get("ExitCode") == 0, (state, logs.stdout[-3000:], logs.stderr[-3000:])
        assert plain.states()["burner"] == "running"
    finally:
        realpod.podman("rm", "-f", "-t", "5", name, check=False, timeout=60)
