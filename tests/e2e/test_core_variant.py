"""The core agent image in the real pod (issue 23): a pod annotated
`tracecar.dev/image-variant: core` gets tracecar-agent-core from the webhook; its CPU
profiles (perf, py-spy), Python stacks and plain uprobes (perf probe) work, and what
needs the full image (bpftrace; an LTTng session; a native stack: gdb) answers 409
saying so and how to get it, as `/capabilities` does.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e import realpod

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

HOW = "tracecar.dev/image-variant: full"


@pytest.fixture(scope="module")
def core_pod(webhook: realpod.Webhook) -> dict[str, Any]:
    pod = realpod.demo_pod(f"tracecar-core-{secrets.token_hex(3)}")
    pod["metadata"].setdefault("annotations", {})["tracecar.dev/image-variant"] = "core"
    with webhook.client() as client:
        r = client.post("/mutate", json=realpod.admission_review(pod))
    assert r.status_code == 200, r.text
    return realpod.apply_review(pod, r.json())


@pytest.fixture(scope="module")
def core_agent(
    core_pod: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    podman_pod = realpod.for_podman(core_pod)
    with realpod.kube_play(podman_pod, tmp_path_factory.mktemp("core")) as pod:
        names = {c["name"] for c in core_pod["spec"]["containers"]}
        realpod.wait_until(
            lambda: all(pod.states().get(n) == "running" for n in names),
            60,
            f"pod {pod.name} running",
        )
        token = realpod.token_from_spec(core_pod, tmp_path_factory.mktemp("corespec"))
        with realpod.port_forward(pod, realpod.agent_port(core_pod)) as url:
            realpod.wait_until(
                lambda: realpod.healthy(url),
                60,
                "core agent /healthz",
                pod.container("tracecar-agent"),
            )
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                yield client


def _pid(agent: httpx.Client, container: str) -> int:
    body = agent.get("/processes").json()
    procs = body["processes"] if isinstance(body, dict) else body
    return int(next(p["pid"] for p in procs if p["container"] == container))


def test_the_webhook_injects_the_core_image(core_pod: dict[str, Any]) -> None:
    spec = core_pod["spec"]
    agent = next(
        c
        for c in [*spec.get("initContainers", []), *spec["containers"]]
        if c["name"] == realpod.AGENT_CONTAINER
    )
    assert agent["image"] == realpod.AGENT_CORE_IMAGE


def test_capabilities_name_the_core_image_and_the_way_to_full(core_agent: httpx.Client) -> None:
    caps = core_agent.get("/capabilities").json()
    image = caps["image"]
    assert image["variant"] == "core", image
    assert {"bpftrace", "lttng", "gdb", "babeltrace2"} <= set(image["needs_full_image"])
    assert HOW in image["how_to_get_full"] and "--variant full" in image["how_to_get_full"]
    assert not caps["tools"]["bpftrace"]["available"]
    assert "core image" in caps["tools"]["bpftrace"]["reason"], caps["tools"]["bpftrace"]
    assert caps["tools"]["perf"]["available"], caps["tools"]["perf"]


def test_cpu_profile_by_perf(core_agent: httpx.Client) -> None:
    r = core_agent.post(
        "/profiles",
        params={"wait": "true", "format": "folded"},
        json={"pid": _pid(core_agent, "burner"), "duration_s": 2},
    )
    assert r.status_code == 200, r.text
    assert "tracecar_demo_hot" in r.text


def test_python_stack_by_py_spy(core_agent: httpx.Client) -> None:
    pid = _pid(core_agent, "logger")
    r = core_agent.get(f"/processes/{pid}/stack", params={"format": "json", "runtime": "python"})
    assert r.status_code == 200, r.text
    assert "logger.py" in r.text


def test_a_uprobe_through_perf_probe(core_agent: httpx.Client) -> None:
    """No bpftrace, but perf probe: plain uprobes still work in the core image."""
    r = core_agent.post(
        "/probes",
        json={
            "pid": _pid(core_agent, "burner"),
            "function": "tracecar_demo_hot",
            "mode": "count",
            "duration_s": 2,
        },
    )
    assert r.status_code == 201, r.text
    probe_id = r.json()["id"]
    try:
        realpod.wait_until(
            lambda: (
                core_agent.get(f"/probes/{probe_id}").json().get("state") in {"finished", "failed"}
            ),
            60,
            "the probe to finish",
        )
        state = core_agent.get(f"/probes/{probe_id}").json()
        assert state["state"] == "finished" and int(state["hits"]) > 0, state
        assert state.get("backend") == "perf-probe", state
    finally:
        core_agent.delete(f"/probes/{probe_id}")


@pytest.mark.parametrize(
    ("method", "path", "body", "tool"),
    [
        (
            "POST",
            "/probes",
            {"function": "tracecar_demo_hot", "mode": "count", "backend": "bpftrace"},
            "bpftrace",
        ),
        ("POST", "/lttng/sessions", {"events": [{"domain": "python", "names": ["x"]}]}, "lttng"),
        ("GET", "/processes/{pid}/stack?runtime=native", None, "gdb"),
    ],
)
def test_what_needs_the_full_image_is_a_409_saying_how(
    core_agent: httpx.Client, method: str, path: str, body: dict[str, Any] | None, tool: str
) -> None:
    pid = _pid(core_agent, "burner")
    if body is not None and "function" in body:
        body = {**body, "pid": pid}
    r = core_agent.request(method, path.format(pid=pid), json=body)
    assert r.status_code == 409, r.text
    answer = r.json()
    assert answer["image_variant"] == "core" and answer["needs_image_variant"] == "full", answer
    assert answer["tool"] in {tool, "lttng-sessiond"}, answer
    assert HOW in answer["detail"] and "kubectl tracecar attach" in answer["detail"], answer


def test_a_python_leak_profile_in_python_frames_needs_no_bpftrace(
    core_agent: httpx.Client,
) -> None:
    """The core image has no bpftrace; a CPython target's memory profile does not use it
    (tracemalloc injected for the window, agent/profiling/pymem.py)."""
    pid = _pid(core_agent, "logger")
    r = core_agent.post(
        "/profiles",
        params={"wait": "true", "format": "folded"},
        json={"pid": pid, "type": "leak", "duration_s": 2},
    )
    assert r.status_code == 200, r.text
    plan = core_agent.get(r.headers["location"]).json()["metadata"]["plan"]
    assert [t["pid"] for t in plan["memory"]["python"]["targets"]] == [pid], plan
    assert not plan["bpftrace_argv"], plan


def test_a_native_memory_profile_needs_the_full_image(core_agent: httpx.Client) -> None:
    r = core_agent.post(
        "/profiles", json={"pid": _pid(core_agent, "burner"), "type": "alloc", "duration_s": 2}
    )
    assert r.status_code == 409, r.text
    answer = r.json()
    assert answer["tool"] == "bpftrace" and answer["needs_image_variant"] == "full", answer
    assert HOW in answer["detail"], answer
