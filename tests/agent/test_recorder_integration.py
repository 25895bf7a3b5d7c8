"""The flight recorder through the agent: the real bpftrace sampling the simulated pod
at a low rate, a real workload in two phases with different hot functions (SIGUSR1
flips them), and flame graphs of intervals of the retained window."""

from __future__ import annotations

import os
import signal
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.profiling._flight_ring import SAMPLER_LATE_AFTER_S
from tests import podsim
from tests.agent.support import (
    folded_total,
    pod_processes,
    until_complete,
    until_recorded,
)
from tests.agent.workloads import JAVA_CHAIN, NODE_CHAIN, SHIFT_C, build_java, compile_c
from tests.conftest import need
from tests.interpreters import PY312

pytestmark = pytest.mark.integration


@pytest.fixture
def client(agent: podsim.AgentHandle) -> Iterator[httpx.Client]:
    with agent.client() as c:
        yield c
        c.delete("/recorder")


@pytest.fixture(scope="module")
def shift_binary(tmp_path_factory: pytest.TempPathFactory) -> Any:
    need("bpftrace", "gcc")
    return compile_c(SHIFT_C, tmp_path_factory.mktemp("rec") / "shift")


def share(stacks: dict[str, int], name: str) -> float:
    return sum(n for s, n in stacks.items() if name in s) / max(sum(stacks.values()), 1)


def interval(client: httpx.Client, start: float, end: float, fmt: str = "folded") -> httpx.Response:
    return client.get("/recorder/profile", params={"from": start, "to": end, "format": fmt})


def test_two_phases_each_interval_shows_its_function(
    pod: podsim.SimPod, client: httpx.Client, shift_binary: Any
) -> None:
    r = client.post("/recorder", json={"frequency_hz": 49})
    assert r.status_code == 201, r.text
    assert client.post("/recorder", json={}).status_code == 409  # one at a time
    # Started after the recorder: picked up all the same.
    app = pod.run("phases", ["/srv/shift"], files={"shift": shift_binary})
    try:
        until_recorded(client)  # bpftrace's start took seconds on a busy machine
        time.sleep(1)
        a0 = time.time()
        time.sleep(4)
        a1 = time.time()
        os.kill(app.host_pid, signal.SIGUSR1)  # alpha 9:1 -> beta 9:1
        time.sleep(0.5)
        b0 = time.time()
        time.sleep(4)
        b1 = time.time()
        time.sleep(1.5)  # the last second's counts arrive
        status = client.get("/recorder").json()
        assert status["state"] == "recording" and status["window"]["start"] <= a0, status
        assert status["window"]["end"] >= b1 - 1, status
        phase_a = folded_total(interval(client, a0 + 1, a1 - 1).text)
        phase_b = folded_total(interval(client, b0 + 1, b1 - 1).text)
        assert share(phase_a, "alpha_function") > 0.6, phase_a
        assert share(phase_b, "beta_function") > 0.6, phase_b
        assert any(s.startswith("shift;") for s in phase_a)
        svg = interval(client, a0 + 1, a1 - 1, "svg")
        assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
        assert b"alpha_function" in svg.content
        ET.fromstring(svg.content)
        assert float(svg.headers["x-tracecar-from"]) <= a0 + 1
        for fmt in ("speedscope", "pprof"):
            assert interval(client, a0, b1, fmt).status_code == 200
        # Intervals kept as profiles diff like any two profiles: beta grew, alpha shrank.
        ids = []
        for start, end in ((a0 + 1, a1 - 1), (b0 + 1, b1 - 1)):
            r = client.post("/recorder/profiles", params={"from": start, "to": end})
            assert r.status_code == 201 and r.json()["state"] == "succeeded", r.text
            ids.append(r.json()["id"])
        assert "alpha_function" in client.get(f"/profiles/{ids[0]}/flamegraph.svg").text
        diff = client.get(
            "/profiles/diff", params={"base": ids[0], "target": ids[1], "format": "folded"}
        ).text
        change = {"alpha_function": 0, "beta_function": 0}
        for line in diff.splitlines():
            stack, b, t = line.rsplit(" ", 2)
            for fn in change:
                if fn in stack:
                    change[fn] += int(t) - int(b)
        assert change["alpha_function"] < 0 < change["beta_function"], change
        # Bad intervals (inverted, wholly before the window): 422 saying what the window
        # is, times in full. One reaching past the window: its retained part, said so.
        w = status["window"]
        for start, end in ((b1, a0), (w["start"] - 100, w["start"] - 50)):
            r = interval(client, start, end)
            assert r.status_code == 422, r.text
            assert "window" in r.json() and "e+09" not in r.json()["detail"], r.text
        r = interval(client, a0, b1 + 1000)
        assert r.status_code == 200 and r.headers["x-tracecar-coverage"] == "partial", r.headers
        assert float(r.headers["x-tracecar-to"]) < b1 + 10
        r = client.get("/recorder/profile", params={"from": "x", "to": a1})
        assert r.status_code == 422
        r = client.get("/recorder/profile", params={"from": a0, "to": a1, "format": "pdf"})
        assert r.status_code == 422
    finally:
        app.stop()
    assert client.delete("/recorder").status_code == 204
    assert client.get("/recorder").json()["state"] == "stopped"
    r = interval(client, a0, a1)
    assert r.status_code == 409 and "POST /recorder" in r.json()["detail"]
    deadline = time.monotonic() + 10
    while pod_processes(pod, "bpftrace") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pod_processes(pod, "bpftrace") == []


def until_evicted(client: httpx.Client) -> dict[str, Any]:
    """The status once the ring has dropped a bucket (however slowly a busy machine
    starts bpftrace: it parses BTF and loads the kernel's symbols first)."""
    deadline = time.monotonic() + 90
    while True:
        s: dict[str, Any] = client.get("/recorder").json()
        if s["evicted_buckets"] > 0 or time.monotonic() > deadline:
            return s
        time.sleep(0.5)


def test_ring_stays_within_its_bounds_after_it_wraps(
    pod: podsim.SimPod, client: httpx.Client, shift_binary: Any
) -> None:
    app = pod.run("wrapper", ["/srv/shift"], files={"shift": shift_binary})
    try:
        r = client.post(
            "/recorder", json={"container": "wrapper", "retain_s": 3, "max_bytes": 100000}
        )
        assert r.status_code == 201, r.text
        s = until_evicted(client)
        assert s["evicted_buckets"] > 0 and s["window"]["end"] - s["window"]["start"] <= 4, s
        assert s["bytes"] <= 100000
        client.delete("/recorder")
        r = client.post("/recorder", json={"container": "wrapper", "max_bytes": 300})
        assert r.status_code == 201, r.text
        s = until_evicted(client)
        # A busy second with more distinct stacks than 300 bytes hold is trimmed to its
        # heaviest stacks (the rest under one [trimmed: ...] frame), never dropped: the
        # ring is never empty, never above its bound.
        assert s["evicted_buckets"] > 0 and 0 < s["bytes"] <= 300 and s["buckets"] >= 1, s
        # Only the container's processes: the agent's own never show.
        # A 300-byte ring holds about one second: by the time the query comes (a busy
        # machine), that window may have moved on. Ask again for the one the 422 names.
        w = s["window"]
        for _ in range(5):
            r = interval(client, w["start"], w["end"])
            if r.status_code != 422:
                break
            w = r.json()["window"]
        assert r.status_code == 200, r.text
        stacks = folded_total(r.text)
        assert stacks and all(k.startswith(("shift;", "[trimmed")) for k in stacks), stacks
    finally:
        app.stop()


def test_recorder_bad_input_and_capabilities(client: httpx.Client) -> None:
    caps = client.get("/capabilities").json()["recorder"]
    assert caps["default_frequency_hz"] == 19 and caps["max_retain_s"] > 0 and caps["max_bytes"] > 0
    for body, words in (
        ({"frequency_hz": 0}, "frequency_hz must be between 1 and 99"),
        ({"retain_s": 1}, "retain_s must be between 2"),
        ({"max_bytes": 10}, "max_bytes must be between 256"),
        ({"pid": 999999}, "999999"),
        ({"container": "nope-nope"}, "nope-nope"),
        ({"pid": 1, "container": "x"}, "at most one of"),
    ):
        r = client.post("/recorder", json=body)
        assert r.status_code in (404, 422) and words in r.json()["detail"], (body, r.text)
    assert client.get("/recorder").json()["state"] == "stopped"
    r = client.get("/recorder/profile", params={"from": 1, "to": 2})
    assert r.status_code == 409


# Two known functions at a known ratio of CPU time (3:1), whatever the machine's load:
# each burns its share of the thread's own CPU time, not of the wall clock.
PY_TWO = r"""
import time

def render_page(ms):
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        pass

def parse_request(ms):
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        pass

while True:
    render_page(30)
    parse_request(10)
"""


def test_python_processes_are_recorded_with_whole_python_stacks(
    pod: podsim.SimPod, client: httpx.Client, shift_binary: Any
) -> None:
    r = client.post("/recorder", json={})  # the whole pod, 19 Hz
    assert r.status_code == 201, r.text
    # Both started after the recorder: picked up all the same, merged into one ring.
    py = pod.run("pyapp", [PY312, "/srv/two.py"], files={"two.py": PY_TWO.encode()})
    native = pod.run("native", ["/srv/shift"], files={"shift": shift_binary})
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = client.get("/recorder").json()
            mine = status["python"].get(str(py.pid), {})
            if mine.get("seconds", 0) >= 2:
                break
            time.sleep(0.5)
        assert mine.get("profiler") == "py-spy" and mine["state"] == "recording", status
        t0 = time.time()
        time.sleep(12)
        t1 = time.time()
        # Until the interval is complete: bpftrace's seconds are waited for, and on a
        # busy machine one that met a library's symbols first came seconds late.
        status = until_complete(client, t1, SAMPLER_LATE_AFTER_S + 15)
        assert status["lag_s"] is not None and status["lag_s"] < SAMPLER_LATE_AFTER_S, status
        stacks = folded_total(interval(client, t0, t1).text)
        python = {s: n for s, n in stacks.items() if s.startswith("python3")}
        alpha = sum(n for s, n in python.items() if "render_page (/srv/two.py" in s)
        beta = sum(n for s, n in python.items() if "parse_request (/srv/two.py" in s)
        assert alpha + beta >= 0.8 * sum(python.values()) and alpha + beta > 50, python
        assert 0.6 <= alpha / (alpha + beta) <= 0.9, (alpha, beta)
        # Whole Python stacks, not the interpreter's frames; the C app's stacks beside them.
        assert all(
            "<module> (/srv/two.py" in s for s in python if "_page" in s or "_request" in s
        ), python
        assert not any("_PyEval_EvalFrameDefault" in s for s in python), python
        # The sampler's late seconds are waited for (a loaded node), not dropped.
        assert any(s.startswith("shift;") for s in stacks), (stacks, status)
        svg = interval(client, t0, t1, "svg").text
        assert "render_page" in svg and "parse_request" in svg
    finally:
        py.stop()
        native.stop()
    assert client.delete("/recorder").status_code == 204
    deadline = time.monotonic() + 10
    while (pod_processes(pod, "py-spy") or pod_processes(pod, "bpftrace")) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert pod_processes(pod, "py-spy") == [] and pod_processes(pod, "bpftrace") == []


def test_a_query_beyond_the_window_answers_with_the_retained_part(
    pod: podsim.SimPod, client: httpx.Client, shift_binary: Any
) -> None:
    app = pod.run("beyond", ["/srv/shift"], files={"shift": shift_binary})
    try:
        r = client.post("/recorder", json={"container": "beyond", "retain_s": 4})
        assert r.status_code == 201, r.text
        until_evicted(client)  # more than 4 s recorded
        now = time.time()
        status = client.get("/recorder").json()
        w = status["window"]
        assert w["end"] - w["start"] <= 5, status
        r = interval(client, now - 60, now, "svg")  # "the last minute", 4 s retained
        assert r.status_code == 200, r.text
        assert r.headers["x-tracecar-coverage"] == "partial"
        assert float(r.headers["x-tracecar-from"]) >= w["start"]
        assert float(r.headers["x-tracecar-requested-from"]) == pytest.approx(now - 60, abs=0.01)
        assert "retained part only" in r.text and "alpha_function" in r.text
        r = interval(client, now - 600, now - 300)  # wholly before it: 422, times in full
        assert r.status_code == 422 and "wholly outside" in r.json()["detail"], r.text
        assert f"{int(now - 600)}" in r.json()["detail"] and "e+09" not in r.json()["detail"]
        assert "T" in r.json()["detail"].split("(")[1]  # ISO 8601 beside it
    finally:
        app.stop()


def _recorded(client: httpx.Client, name: str, deadline_s: float = 90) -> dict[str, int]:
    """The last 5 s the recorder holds, once ``name`` shows in them."""
    deadline = time.monotonic() + deadline_s
    while True:
        status = client.get("/recorder").json()
        end = status["complete_until"]
        if end is not None:
            stacks = folded_total(interval(client, end - 5, end).text)
            if any(name in s for s in stacks) or time.monotonic() > deadline:
                return stacks
        time.sleep(1)


def test_node_and_java_frames_are_named_from_their_perf_maps(
    pod: podsim.SimPod, client: httpx.Client, tmp_path: Path
) -> None:
    need("node", "java", "javac", "jattach")
    node = pod.run(
        "node",
        ["node", "--perf-basic-prof", "--max-inlined-bytecode-size=0", "/srv/chain.js"],
        files={"chain.js": NODE_CHAIN.encode()},
    )
    java = pod.run(
        "java",
        ["java", "-XX:+PreserveFramePointer", "-XX:CompileCommand=quiet",
         "-XX:CompileCommand=dontinline,Chain::*", "-cp", "/srv", "Chain"],
        files={"Chain.class": build_java(JAVA_CHAIN, tmp_path)},
    )  # fmt: skip
    try:
        r = client.post("/recorder", json={"pids": [node.pid, java.pid], "frequency_hz": 49})
        assert r.status_code == 201, r.text
        stacks = _recorded(client, "hot /srv/chain.js")
        node_hot = sum(n for s, n in stacks.items() if "hot /srv/chain.js" in s)
        assert node_hot > 0.3 * sum(n for s, n in stacks.items() if s.startswith("node")), stacks
        # The JVM is asked for its map soon after first sight, and again as it compiles.
        stacks = _recorded(client, "Chain.hot")
        assert any("Chain.hot" in s for s in stacks), stacks
    finally:
        node.stop()
        java.stop()
