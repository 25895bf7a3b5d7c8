"""Whole call stacks for each runtime, through the agent in the simulated pod.

Every workload has the same known call chain: ``main`` calls ``hot`` directly three
times for each call through ``cold`` (a 3:1 split). Each test asserts that both
chains appear with their callers, in roughly that proportion: a profile that keeps
only the innermost function (what perf alone gives Python) cannot tell them apart.
The tools are the real ones (py-spy, perf, jattach) on real processes.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import podsim
from tests.agent.support import (
    half_written,
    pod_processes,
    profile,
    profile_until,
    wait_done,
    wait_processes,
)
from tests.agent.workloads import (
    GO_CHAIN,
    HOTCOLD_C,
    JAVA_CHAIN,
    NODE_CHAIN,
    PY_CHAIN,
    build_go,
    build_java,
    compile_c,
)
from tests.conftest import need
from tests.interpreters import PY38, PY311, PY312, PY313

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def nothing_left_behind(pod: podsim.SimPod, agent: podsim.AgentHandle) -> Iterator[None]:
    yield
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (
        pod_processes(pod, "perf") or pod_processes(pod, "py-spy") or pod_processes(pod, "jattach")
    ):
        time.sleep(0.1)
    for tool in ("perf", "py-spy", "jattach"):
        assert pod_processes(pod, tool) == [], f"a {tool} process was left running"
    assert half_written(agent.data_dir) == [], "half-written artifacts left behind"


def chain_split(stacks: dict[str, int], *, hot: str, cold: str, main: str) -> tuple[int, int]:
    """Samples in ``hot`` reached through ``cold``, and directly from ``main``."""
    via_cold = direct = 0
    for stack, n in stacks.items():
        frames = stack.split(";")
        hot_at = [i for i, f in enumerate(frames) if hot in f]
        if not hot_at:
            continue
        callers = frames[: hot_at[0]]
        if any(cold in f for f in callers):
            via_cold += n
        elif any(main in f for f in callers):
            direct += n
    return via_cold, direct


SPLIT_SAMPLES = 150
"""Samples enough for the 3:1 split to hold its bounds: with 40, a loaded machine's
bursty scheduling once gave 30 direct of 55 (0.545, against 0.75 expected)."""


def assert_known_split(via_cold: int, direct: int, stacks: dict[str, int]) -> None:
    total = via_cold + direct
    assert total >= 20, (via_cold, direct, sorted(stacks.items(), key=lambda kv: -kv[1])[:10])
    # 3:1 expected (0.75 direct); wide bounds: 2 cores shared with the rest of the suite.
    top = sorted(stacks.items(), key=lambda kv: -kv[1])[:6]
    assert via_cold > 0 and 0.55 <= direct / total <= 0.92, (via_cold, direct, top)


def enough_for_a_split(stacks: dict[str, int]) -> bool:
    return sum(stacks.values()) >= SPLIT_SAMPLES


@pytest.mark.parametrize("python", [PY38, PY311, PY312, PY313], ids=["3.8", "3.11", "3.12", "3.13"])
def test_python_whole_stacks_without_perf_support(
    pod: podsim.SimPod, client: httpx.Client, python: str
) -> None:
    # Started WITHOUT PYTHONPERFSUPPORT: perf alone would show no Python frame at all.
    app = pod.run("py", [python, "/srv/chain.py"], files={"chain.py": PY_CHAIN.encode()})
    try:
        time.sleep(0.5)
        plan = client.post("/profiles", params={"dry_run": "true"}, json={"pid": app.pid})
        (choice,) = plan.json()["plan"]["profilers"]
        assert choice["profiler"] == "py-spy" and "whole Python stacks" in choice["reason"]
        stacks, view = profile_until(client, {"pid": app.pid, "duration_s": 2}, enough_for_a_split)
        via_cold, direct = chain_split(
            stacks, hot="hot (/srv/chain.py", cold="cold (", main="main ("
        )
        assert_known_split(via_cold, direct, stacks)
        # function, file and line, root first, under the process's name
        assert any(s.startswith(f"{Path(python).name};<module> (/srv/chain.py:") for s in stacks)
        meta = view["metadata"]
        assert meta["py_spy"][0]["ok"] and meta["py_spy"][0]["samples"] > 0
        assert meta["dropped_samples"] >= 0 and "perf_data" not in view["links"]
        job_id = view["id"]
        r = client.get(f"/profiles/{job_id}/perf.data")
        assert r.status_code == 409 and "py-spy recorded all" in r.json()["detail"]
        # Every format, and the folded view's pid/tid options.
        for path in ("flamegraph.svg", "speedscope.json", "profile.pb.gz"):
            assert client.get(f"/profiles/{job_id}/{path}").status_code == 200
        by_tid = client.get(f"/profiles/{job_id}/folded", params={"tid": "true"}).text
        assert f"-{app.pid}/" in by_tid.splitlines()[0]
    finally:
        app.stop()


def test_mixed_container_one_graph(
    pod: podsim.SimPod, client: httpx.Client, tmp_path: Path
) -> None:
    """A container with a Python and a C process: py-spy and perf side by side, one graph."""
    need("gcc")
    exe = compile_c(HOTCOLD_C, tmp_path / "hotcold")
    app = pod.run(
        "mixed",
        ["/bin/sh", "-c", f"{PY312} /srv/chain.py & exec /srv/hotcold"],
        files={"chain.py": PY_CHAIN.encode(), "hotcold": exe},
    )
    try:
        wait_processes(client, "mixed", runtimes={"python": 1, "native": 1})
        stacks, view = profile(client, {"container": "mixed", "duration_s": 2})
        kinds = {c["profiler"] for c in view["metadata"]["plan"]["profilers"]}
        assert kinds == {"perf", "py-spy"}, view["metadata"]["plan"]["profilers"]
        assert any("hot_function" in s for s in stacks)
        assert any("hot (/srv/chain.py" in s for s in stacks)
        assert "perf_data" in view["links"]
    finally:
        app.stop()


def test_python_native_mixed_stacks(pod: podsim.SimPod, client: httpx.Client) -> None:
    app = pod.run("pynative", [PY312, "/srv/chain.py"], files={"chain.py": PY_CHAIN.encode()})
    try:
        time.sleep(0.5)
        stacks, view = profile(client, {"pid": app.pid, "duration_s": 1.5, "python_native": True})
        assert "--native" in view["metadata"]["plan"]["py_spy"][0]["argv"]
        assert any("hot (/srv/chain.py" in s for s in stacks)
        # Mixed: native frames (the interpreter's, libc's) under the Python ones, which
        # the default mode never shows.
        native = {f for s in stacks for f in s.split(";")[1:] if not re.search(r"\.py:\d+\)$", f)}
        assert native, sorted(stacks)[:5]
    finally:
        app.stop()


def test_profiler_choice_errors(pod: podsim.SimPod, client: httpx.Client, tmp_path: Path) -> None:
    need("gcc")
    exe = compile_c(HOTCOLD_C, tmp_path / "hotcold")
    c_app = pod.run("notpy", ["/srv/hotcold"], files={"hotcold": exe})
    try:
        r = client.post("/profiles", json={"pid": c_app.pid, "profiler": "py-spy"})
        assert r.status_code == 409, r.text
        assert "not" in r.json()["detail"] or "native" in r.json()["detail"]
        r = client.post(
            "/profiles", json={"pid": c_app.pid, "profiler": "perf", "python_native": True}
        )
        assert r.status_code == 422 and "python_native" in r.text
        r = client.post(
            "/profiles", json={"pid": c_app.pid, "type": "off-cpu", "profiler": "py-spy"}
        )
        assert r.status_code == 422, r.text
        r = client.post("/profiles", json={"pid": c_app.pid, "profiler": "pyspy"})
        assert r.status_code == 422 and "py-spy" in r.text
    finally:
        c_app.stop()


def test_python_exiting_mid_profile(pod: podsim.SimPod, client: httpx.Client) -> None:
    """The target exits while py-spy samples it: what was sampled is kept, the pid is
    reported as exited. The app is stopped only once py-spy is attached and has had
    time to sample (no race with a slow start on a busy machine)."""
    app = pod.run("pyshort", [PY312, "/srv/chain.py"], files={"chain.py": PY_CHAIN.encode()})
    r = client.post("/profiles", json={"pid": app.pid, "duration_s": 60})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 60
    while not pod_processes(pod, "py-spy") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pod_processes(pod, "py-spy"), "py-spy never started"
    time.sleep(1.0)  # a floor for sampling at 100 Hz, not a timing assumption on load
    app.stop()
    body = wait_done(client, r.json()["id"])
    assert body["state"] == "succeeded", body
    meta = body["metadata"]
    assert meta["py_spy"][0]["exited"] and meta["py_spy"][0]["samples"] > 0, meta
    assert meta["exited_pids"] == [app.pid], meta


def test_py_spy_turned_off_falls_back_to_perf(pod: podsim.SimPod) -> None:
    """A runtime tool missing: Python targets go to perf, and the plan says why."""
    handle = podsim.start_agent(pod, env={"TRACECAR_AGENT_PY_SPY": "off"})
    app = pod.run("pyoff", [PY312, "/srv/chain.py"], files={"chain.py": PY_CHAIN.encode()})
    try:
        with handle.client() as c:
            plan = c.post("/profiles", params={"dry_run": "true"}, json={"pid": app.pid}).json()
            (choice,) = plan["plan"]["profilers"]
            assert choice["profiler"] == "perf" and "py-spy is not installed" in choice["reason"]
            r = c.post("/profiles", json={"pid": app.pid, "profiler": "py-spy"})
            assert r.status_code == 503 and "py-spy" in r.json()["detail"]
            caps = c.get("/capabilities").json()["profiling"]["profilers"]
            assert caps["py-spy"]["available"] is False
    finally:
        app.stop()
        handle.container.stop()


def _wait_cpu(pod: podsim.SimPod, app: podsim.Container, seconds: float) -> None:
    """Let a JIT warm up: the workload must have burnt ``seconds`` of CPU."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        fields = Path(f"/proc/{app.host_pid}/stat").read_text().rsplit(")", 1)[1].split()
        if (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") >= seconds:
            return
        time.sleep(0.2)
    raise AssertionError("the workload did not start burning CPU")


def test_java_whole_stacks(pod: podsim.SimPod, client: httpx.Client, tmp_path: Path) -> None:
    """OpenJDK with -XX:+PreserveFramePointer (what the webhook sets): perf walks the JIT
    frames and the perf map jattach asks the JVM for names them, callers included."""
    need("java", "javac", "jattach")
    cls = build_java(JAVA_CHAIN, tmp_path)
    app = pod.run(
        "java",
        ["java", "-XX:+PreserveFramePointer", "-XX:CompileCommand=quiet",
         "-XX:CompileCommand=dontinline,Chain::*", "-cp", "/srv", "Chain"],
        files={"Chain.class": cls},
    )  # fmt: skip
    try:
        _wait_cpu(pod, app, 2.0)
        stacks, view = profile_until(client, {"pid": app.pid, "duration_s": 2}, enough_for_a_split)
        meta = view["metadata"]
        assert meta["jvm_perf_maps"] == {str(app.pid): "written"}, meta.get("notes")
        via_cold, direct = chain_split(
            stacks, hot="Chain.hot", cold="Chain.cold", main="Chain.work"
        )
        assert_known_split(via_cold, direct, stacks)
        assert not any("PreserveFramePointer" in r for r in meta["unresolved"]["reasons"])
    finally:
        app.stop()


def test_java_without_frame_pointers_says_so(
    pod: podsim.SimPod, client: httpx.Client, tmp_path: Path
) -> None:
    need("java", "javac")
    cls = build_java(JAVA_CHAIN, tmp_path)
    app = pod.run("javanofp", ["java", "-cp", "/srv", "Chain"], files={"Chain.class": cls})
    try:
        plan = client.post("/profiles", params={"dry_run": "true"}, json={"pid": app.pid})
        reasons = " ".join(plan.json()["plan"]["unresolved"])
        assert "without -XX:+PreserveFramePointer" in reasons and "callers" in reasons
    finally:
        app.stop()


def test_node_whole_stacks(pod: podsim.SimPod, client: httpx.Client) -> None:
    """Node with the webhook's flags: JavaScript names and their callers. (Inlining off,
    as for Java: TurboFan would fold hot into its callers.)"""
    need("node")
    app = pod.run(
        "node",
        ["node", "--perf-basic-prof", "--interpreted-frames-native-stack",
         "--max-inlined-bytecode-size=0", "/srv/chain.js"],
        files={"chain.js": NODE_CHAIN.encode()},
    )  # fmt: skip
    try:
        _wait_cpu(pod, app, 1.0)
        stacks, view = profile_until(client, {"pid": app.pid, "duration_s": 2}, enough_for_a_split)
        via_cold, direct = chain_split(
            stacks, hot="hot /srv/chain.js", cold="cold /srv/chain.js", main="main /srv/chain.js"
        )
        assert_known_split(via_cold, direct, stacks)
        assert view["metadata"]["unresolved"]["perf_maps_used"] == [f"/tmp/perf-{app.pid}.map"]
    finally:
        app.stop()


def test_node_without_flags_says_so(pod: podsim.SimPod, client: httpx.Client) -> None:
    need("node")
    app = pod.run("nodeplain", ["node", "/srv/chain.js"], files={"chain.js": NODE_CHAIN.encode()})
    try:
        time.sleep(0.5)
        plan = client.post("/profiles", params={"dry_run": "true"}, json={"pid": app.pid})
        reasons = " ".join(plan.json()["plan"]["unresolved"])
        assert "--perf-basic-prof" in reasons, reasons
    finally:
        app.stop()


def test_go_whole_stacks(pod: podsim.SimPod, client: httpx.Client, tmp_path: Path) -> None:
    exe = build_go(GO_CHAIN, tmp_path / "chain")
    app = pod.run("go", ["/srv/chain"], files={"chain": exe})
    try:
        time.sleep(0.5)
        stacks, view = profile_until(client, {"pid": app.pid, "duration_s": 2}, enough_for_a_split)
        assert view["metadata"]["plan"]["call_graph"] == "fp"
        assert any("frameless leaf" in r for r in view["metadata"]["plan"]["unresolved"])
        via_cold, direct = chain_split(stacks, hot="main.hot", cold="main.cold", main="main.main")
        assert_known_split(via_cold, direct, stacks)
    finally:
        app.stop()


WORKERS = r"""
import multiprocessing as mp
import sys, time
sys.path.insert(0, "/srv")
from chainlib import main

if __name__ == "__main__":
    mp.set_start_method("fork")
    procs = [mp.Process(target=main) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
"""


def test_python_workers_of_a_container(pod: podsim.SimPod, client: httpx.Client) -> None:
    """A multiprocessing parent and its workers (gunicorn's shape): targeting the
    container covers every worker, each sampled by py-spy, in one graph."""
    lib = PY_CHAIN.replace("\nmain()\n", "\n")
    app = pod.run(
        "workers",
        [PY312, "/srv/workers.py"],
        files={"workers.py": WORKERS.encode(), "chainlib.py": lib.encode()},
    )
    try:
        wait_processes(client, "workers", runtimes={"python": 3})
        _, view = profile(client, {"container": "workers", "duration_s": 2, "frequency_hz": 49})
        spied = [r["pid"] for r in view["metadata"]["py_spy"] if r["ok"]]
        assert len(spied) == 3, view["metadata"]["py_spy"]  # the parent and two workers
        by_pid = client.get(f"/profiles/{view['id']}/folded", params={"pid": "true"}).text
        busy = {
            line.split(";", 1)[0] for line in by_pid.splitlines() if "hot (/srv/chainlib.py" in line
        }
        assert len(busy) == 2, busy  # both workers burn CPU in hot, each under its own pid
    finally:
        app.stop()


def test_stopping_a_py_spy_profile_early_keeps_it(pod: podsim.SimPod, client: httpx.Client) -> None:
    app = pod.run("pystop", [PY312, "/srv/chain.py"], files={"chain.py": PY_CHAIN.encode()})
    try:
        time.sleep(0.3)
        r = client.post("/profiles", json={"pid": app.pid, "duration_s": 60})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 60
        while not pod_processes(pod, "py-spy") and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # py-spy attached: a floor for samples at 100 Hz
        assert client.delete(f"/profiles/{job_id}").status_code == 202
        body = wait_done(client, job_id, timeout=30)
        assert body["state"] == "succeeded", body
        meta = body["metadata"]
        assert meta["stopped_early"] and meta["py_spy"][0]["samples"] > 0
        assert "hot (/srv/chain.py" in client.get(f"/profiles/{job_id}/folded").text
    finally:
        app.stop()
