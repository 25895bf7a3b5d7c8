"""Every capability's tool, run from the built full agent image (issue 23: the diet
removed nothing). The images are pruned roots (scripts/images.d/prune): a library or
file a tool needs and the build removed shows here, not on the host where the
integration stage runs the same tools.

test_real_pod.py covers perf (a flame graph), bpftrace (a uprobe), LTTng with
babeltrace2 (a session's events). Here: py-spy (a Python stack and a Python profile),
gdb (a native stack), gcore (a core dump), `perf probe` (the other probe backend), an
off-CPU profile, the flight recorder (bpftrace and py-spy), the prebuilt NDJSON sink,
and the tools' own start in the image (jattach has no JVM in the demo pod: it is run
for its usage line). One test each, so a failure names the capability.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.e2e import realpod

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

HOT = "tracecar_demo_hot"


def _pid(agent: httpx.Client, container: str) -> int:
    r = agent.get("/processes")
    assert r.status_code == 200, r.text
    body = r.json()
    procs = body["processes"] if isinstance(body, dict) else body
    mine = [p for p in procs if p["container"] == container]
    assert len(mine) == 1, procs
    return int(mine[0]["pid"])


def _wait_job(agent: httpx.Client, path: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = agent.get(path).json()
        if state.get("state") in {"succeeded", "failed", "finished", "stopped"}:
            return state
        time.sleep(0.5)
    raise AssertionError(f"{path} did not finish: {state}")


def test_the_tools_start_in_the_image(real_pod: realpod.RealPod) -> None:
    container = real_pod.container(realpod.AGENT_CONTAINER)
    script = (
        "set -e; perf version; bpftrace --version; lttng --version; babeltrace2 --version"
        " | head -1; gdb --version | head -1; py-spy --version; jattach 2>&1 | grep -q Usage"
        "; command -v gcore lttng-sessiond mount"
    )
    out = realpod.podman("exec", container, "sh", "-c", script, timeout=120)
    for tool in ("perf version", "bpftrace", "lttng", "Babeltrace", "GNU gdb", "py-spy"):
        assert tool in out, out


def test_python_stack_by_py_spy(agent: httpx.Client) -> None:
    pid = _pid(agent, "logger")
    r = agent.get(f"/processes/{pid}/stack", params={"format": "json", "runtime": "python"})
    assert r.status_code == 200, r.text
    text = r.text
    assert "logger.py" in text, text[:2000]


def test_python_profile_by_py_spy(agent: httpx.Client) -> None:
    pid = _pid(agent, "logger")
    r = agent.post(
        "/profiles",
        params={"wait": "true", "format": "folded"},
        json={"pid": pid, "duration_s": 2, "profiler": "py-spy"},
    )
    assert r.status_code == 200, r.text


def test_native_stack_by_gdb(agent: httpx.Client) -> None:
    pid = _pid(agent, "burner")
    r = agent.get(f"/processes/{pid}/stack", params={"format": "json", "runtime": "native"})
    assert r.status_code == 200, r.text
    assert "main" in r.text, r.text[:2000]


def test_core_dump_by_gcore(agent: httpx.Client) -> None:
    pid = _pid(agent, "burner")
    r = agent.post(f"/processes/{pid}/dump", params={"wait": "true"}, json={})
    assert r.status_code == 200, r.text
    dump = r.json()
    try:
        assert dump["state"] == "succeeded", dump
        with agent.stream("GET", f"/dumps/{dump['id']}/core") as core:
            assert core.status_code == 200
            head = next(core.iter_bytes())
        assert head[:4] == b"\x7fELF", head[:16]
    finally:
        agent.delete(f"/dumps/{dump['id']}")


def test_probe_by_perf_probe(agent: httpx.Client) -> None:
    pid = _pid(agent, "burner")
    r = agent.post(
        "/probes",
        json={
            "pid": pid,
            "function": HOT,
            "mode": "count",
            "duration_s": 2,
            "backend": "perf-probe",
        },
    )
    assert r.status_code == 201, r.text
    probe_id = r.json()["id"]
    try:
        state = _wait_job(agent, f"/probes/{probe_id}", 60)
        assert state.get("state") == "finished", state
        assert int(state["hits"]) > 0, state
    finally:
        agent.delete(f"/probes/{probe_id}")


def test_off_cpu_profile(agent: httpx.Client) -> None:
    pid = _pid(agent, "logger")  # sleeps between its log lines: off-CPU time
    r = agent.post(
        "/profiles",
        params={"wait": "true", "format": "folded"},
        json={"pid": pid, "duration_s": 2, "type": "off-cpu"},
    )
    assert r.status_code == 200, r.text
    assert r.text.strip(), "an empty off-CPU profile of a process that sleeps"


def test_leak_profile_probes_free_past_its_entry(agent: httpx.Client) -> None:
    """The image's bpftrace is tracecar's build with offset support: a leak profile of a
    native process probes glibc's free past its first instruction, and runs."""
    caps = agent.get("/capabilities").json()
    leak = caps["profiling"]["types"]["leak"]
    assert "past the instructions the kernel would single-step" in leak["reason"], leak
    pid = _pid(agent, "burner")
    r = agent.post("/profiles", params={"dry_run": "true"}, json={"pid": pid, "type": "leak"})
    assert r.status_code == 200, r.text
    plan = r.json()["plan"]
    assert ":free+3" in plan["program"], plan["program"]
    assert any("past its first instructions" in n for n in plan["memory"]["notes"]), plan
    r = agent.post(
        "/profiles",
        params={"wait": "true", "format": "folded"},
        json={"pid": pid, "duration_s": 2, "type": "leak"},
    )
    assert r.status_code == 200, r.text


def test_flight_recorder(agent: httpx.Client) -> None:
    r = agent.post("/recorder", json={})
    assert r.status_code in (200, 201), r.text
    try:
        start = time.time()
        deadline = time.monotonic() + 60
        while True:
            time.sleep(2)
            r = agent.get(
                "/recorder/profile",
                params={"from": start - 1, "to": time.time(), "format": "folded"},
            )
            if r.status_code == 200 and HOT in r.text:
                break
            assert time.monotonic() < deadline, (r.status_code, r.text[:2000])
    finally:
        assert agent.delete("/recorder").status_code in (200, 204)


def test_lttng_reads_with_the_prebuilt_native_sink(agent: httpx.Client) -> None:
    caps = agent.get("/capabilities").json()
    assert caps["image"]["variant"] == "full", caps["image"]
    converter = str(caps["lttng"].get("json_converter", ""))
    assert converter.startswith("native"), caps["lttng"]
    for tool in ("perf", "bpftrace", "lttng", "babeltrace2"):
        assert caps["tools"][tool]["available"], caps["tools"][tool]
