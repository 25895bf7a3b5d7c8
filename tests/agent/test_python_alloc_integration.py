"""Alloc profiles of Python processes in Python frames, through the agent, in the simulated
pod: tracecar's sampling allocation tracer (agent/profiling/pyalloc_sampler.c, built by
the agent at start-up with gcc) loaded into real CPython targets by real injection
(pyinjector over ptrace, hypno's library, ctypes), a loop that allocates and drops vs. a
cache that grows, held to the truth the app prints, and nothing left in the target
afterwards (files, the libraries, threads, the state attribute)."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import podsim
from tests.agent.memory_profile_workloads import (
    ALLOC_C,
    ALLOC_C_FLAGS,
    BALANCED_BYTES,
    LEAKY_BYTES,
    PY_ALLOC,
    PY_ALLOC_ROUNDS,
    ROUNDS,
)
from tests.agent.python_memory_support import app, attached, ready, under, wait_log, window
from tests.agent.support import folded_total, half_written, wait_done
from tests.conftest import need
from tests.interpreters import PY38, PY39, PY311_DEBIAN, PY312, PY313

pytestmark = pytest.mark.integration

INTERVAL = 16 * 1024
"""The agent's sampling interval here: a few thousand samples per function in the test's
window (the estimate's spread is about 1/sqrt(samples): 2%, for a 10% bound)."""


@pytest.fixture(scope="module")
def agent(pod: podsim.SimPod) -> podsim.AgentHandle:
    return podsim.start_agent(
        pod, env={"TRACECAR_AGENT_PYTHON_ALLOC_INTERVAL_BYTES": str(INTERVAL)}
    )


@pytest.fixture
def client(agent: podsim.AgentHandle) -> Iterator[httpx.Client]:
    with agent.client() as c:
        yield c
    assert half_written(agent.data_dir) == [], "half-written artifacts left behind"


def _nothing_left_in(c: podsim.Container) -> None:
    """No file of ours in the target's directories, neither library mapped, no thread of
    ours, no state attribute (the next profile could start)."""
    root = f"/proc/{c.host_pid}/root"
    for d in ("tmp", "var/tmp", "dev/shm"):
        left = [n for n in os.listdir(f"{root}/{d}") if n.startswith("tracecar-pymem")]
        assert left == [], (d, left)
    deadline = time.monotonic() + 10
    while True:
        maps = Path(f"/proc/{c.host_pid}/maps").read_text()
        status = Path(f"/proc/{c.host_pid}/status").read_text()
        threads = int(status.split("Threads:")[1].split()[0])
        if "tracecar-pymem" not in maps and threads == 1:
            return
        assert time.monotonic() < deadline, (
            threads,
            [ln for ln in maps.splitlines() if "tracecar-pymem" in ln],
        )
        time.sleep(0.1)


@pytest.mark.parametrize(
    "python",
    [PY312, PY39, PY313, PY311_DEBIAN],
    ids=["3.12", "3.9", "3.13", "3.11-debian"],
)
def test_alloc_in_python_frames_churn_vs_growing_cache(
    pod: podsim.SimPod, client: httpx.Client, python: str
) -> None:
    if not os.path.exists(python):
        pytest.skip(f"{python} is not on this machine")
    name = "pyalloc" + python.rsplit("python", 1)[-1].replace(".", "")
    c = app(pod, name + ("d" if python == PY311_DEBIAN else ""), python, PY_ALLOC)
    try:
        plan = client.post("/profiles?dry_run=true", json={"pid": c.pid, "type": "alloc"})
        assert plan.status_code == 200, plan.text
        mem = plan.json()["plan"]["memory"]
        assert mem["python"]["targets"] == [{"pid": c.pid, "directory": "/tmp"}], mem
        assert mem["python"]["interval_bytes"] == INTERVAL, mem["python"]
        assert "sampling allocation tracer" in mem["targets"][0]["sees"], mem
        assert plan.json()["plan"]["bpftrace_argv"] == [], "no bpftrace for Python frames"
        job_id, done = window(client, c, "alloc")
        _nothing_left_in(c)
        truth = [ln for ln in c.log().splitlines() if ln.startswith("truth ")][-1].split()
    finally:
        c.stop()
    churned_truth, grown_truth = int(truth[1]), int(truth[2])
    meta = done["metadata"]
    assert isinstance(meta, dict)
    stacks = folded_total(client.get(f"/profiles/{job_id}/folded").text)
    churned, grown = under(stacks, "churn_bytes"), under(stacks, "grow_cache")
    # The bound: each function's bytes within 10% of the truth, sampling
    # accounted for (the list the cache grows adds under 2% to grow_cache's).
    assert abs(churned - churned_truth) <= 0.1 * churned_truth, (churned, churned_truth)
    assert abs(grown - grown_truth) <= 0.1 * grown_truth, (grown, grown_truth)
    top = max(stacks, key=lambda s: stacks[s])
    assert top.split(";")[1] == "[python]" and "churn_bytes (/srv/app.py:" in top, top
    # By count: 8 bytes objects a round (and the loop's own small objects: a range and
    # its iterator, whose estimated counts are noisier, each small sample weighing about
    # INTERVAL/size) vs 1 and the list's occasional growth.
    counts = folded_total(client.get(f"/profiles/{job_id}/folded?weight=count").text)
    n_churn, n_grow = under(counts, "churn_bytes"), under(counts, "grow_cache")
    assert n_churn >= 0.85 * 8 * PY_ALLOC_ROUNDS and n_churn >= 4 * n_grow, (n_churn, n_grow)
    assert abs(n_grow - PY_ALLOC_ROUNDS) <= 0.25 * PY_ALLOC_ROUNDS, n_grow
    py = meta["memory"]["python"][str(c.pid)]
    assert py["error"] is None and py["interval_bytes"] == INTERVAL, py
    assert py["samples"] >= 0.8 * (churned_truth + grown_truth) / INTERVAL, py
    assert py["bytes_exact"] >= churned_truth + grown_truth, py
    assert py["left_loaded"] is False, py
    assert any("allocation sampler (16 frames)" in n for n in meta["notes"]), meta["notes"]
    assert "python" in meta["sampling"], meta["sampling"]
    assert "bpftrace_output" not in done["links"], done["links"]
    pb = gzip.decompress(client.get(f"/profiles/{job_id}/profile.pb.gz").content)
    assert b"alloc_space" in pb and b"churn_bytes" in pb
    svg = client.get(f"/profiles/{job_id}/flamegraph.svg").text
    assert "grow_cache" in svg and "bytes" in svg
    sc = client.get(f"/profiles/{job_id}/speedscope.json").json()
    assert sc["profiles"][0]["unit"] == "bytes"


def test_one_alloc_profile_of_a_c_and_a_python_process(
    pod: podsim.SimPod, client: httpx.Client, tmp_path: Path
) -> None:
    """bpftrace for the C program, the sampler for the Python one: one graph, each under
    its own functions, the Python process not bpftrace's (no bytes counted twice)."""
    need("bpftrace", "gcc")
    src = tmp_path / "allocator.c"
    src.write_text(ALLOC_C)
    binary = tmp_path / "allocator"
    subprocess.run(["gcc", *ALLOC_C_FLAGS, "-o", str(binary), str(src)], check=True, timeout=120)
    native = ready(pod.run("callocmix", ["/srv/allocator"], files={"allocator": binary}))
    py = app(pod, "pyallocmix", PY312, PY_ALLOC)
    try:
        body = {"pids": [native.pid, py.pid], "type": "alloc", "duration_s": 300}
        r = client.post("/profiles", json=body)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        attached(client, job_id)
        plan = client.get(f"/profiles/{job_id}").json()["metadata"]["plan"]
        assert f"@__t[{py.pid}]" not in plan["program"], "the Python process is not bpftrace's"
        for c in (native, py):
            os.kill(c.host_pid, signal.SIGUSR1)
        for c in (native, py):
            wait_log(c, "done")
        assert client.delete(f"/profiles/{job_id}").status_code == 202
        done = wait_done(client, job_id, timeout=180)
        assert done["state"] == "succeeded", str(done["error"])[-3000:]
        _nothing_left_in(py)
        truth = [ln for ln in py.log().splitlines() if ln.startswith("truth ")][-1].split()
    finally:
        native.stop()
        py.stop()
    stacks = folded_total(client.get(f"/profiles/{job_id}/folded").text)
    balanced = sum(n for s, n in stacks.items() if "balanced_work" in s.split(";"))
    churned = under(stacks, "churn_bytes")
    assert abs(balanced - ROUNDS * BALANCED_BYTES) <= 0.1 * ROUNDS * BALANCED_BYTES, balanced
    assert abs(churned - int(truth[1])) <= 0.1 * int(truth[1]), (churned, truth)
    assert any("leaky_work" in s for s in stacks) and LEAKY_BYTES
    assert not any(s.startswith("python3.12;") and "[python]" not in s for s in stacks), [
        s for s in stacks if s.startswith("python3.12;")
    ][:5]
    assert "bpftrace_output" in done["links"]


def test_discarded_alloc_profile_leaves_nothing_and_a_second_can_start(
    pod: podsim.SimPod, client: httpx.Client
) -> None:
    c = app(pod, "pyallocdiscard", PY312, PY_ALLOC)
    try:
        body = {"pid": c.pid, "type": "alloc", "duration_s": 300}
        r = client.post("/profiles", json=body)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        attached(client, job_id)
        maps = Path(f"/proc/{c.host_pid}/maps").read_text()
        assert "tracecar-pymem-" in maps and ".sampler.so" in maps, "the sampler is loaded"
        # One profile with Python frames at a time: a second one keeps the C view.
        plan = client.post("/profiles?dry_run=true", json=body).json()["plan"]["memory"]
        assert plan["python"] is None and any("already running" in n for n in plan["notes"])
        assert client.delete(f"/profiles/{job_id}?discard=true").status_code == 204
        _nothing_left_in(c)
        # Everything restored: the same process can be profiled again.
        job_id, _ = window(client, c, "alloc")
        _nothing_left_in(c)
    finally:
        c.stop()
    stacks = folded_total(client.get(f"/profiles/{job_id}/folded").text)
    assert under(stacks, "churn_bytes") > 0 and under(stacks, "grow_cache") > 0, stacks


def test_a_sampler_already_running_in_the_target_is_refused(
    pod: podsim.SimPod, client: httpx.Client
) -> None:
    """Another agent's sampler in the process (its state attribute there): the second
    agent's start is refused by the target's own check, and the first one's is intact."""
    other = podsim.start_agent(pod)
    c = app(pod, "pyalloctwice", PY312, PY_ALLOC)
    try:
        with other.client() as oc:
            r = oc.post("/profiles", json={"pid": c.pid, "type": "alloc", "duration_s": 300})
            assert r.status_code == 202, r.text
            first = r.json()["id"]
            attached(oc, first)
            r = client.post("/profiles", json={"pid": c.pid, "type": "alloc", "duration_s": 5})
            assert r.status_code == 202, r.text
            done = wait_done(client, r.json()["id"], timeout=120)
            assert done["state"] == "failed", done
            assert "already runs in this process" in str(done["error"]), done["error"]
            os.kill(c.host_pid, signal.SIGUSR1)
            wait_log(c, "done")
            assert oc.delete(f"/profiles/{first}").status_code == 202
            ok = wait_done(oc, first, timeout=180)
            assert ok["state"] == "succeeded", ok["error"]
            stacks = folded_total(oc.get(f"/profiles/{first}/folded").text)
            assert under(stacks, "churn_bytes") > 0, stacks
        _nothing_left_in(c)
    finally:
        c.stop()
        other.container.stop()


def test_target_exiting_mid_window_says_so(pod: podsim.SimPod, client: httpx.Client) -> None:
    c = app(pod, "pyallocexits", PY312, PY_ALLOC)
    try:
        r = client.post("/profiles", json={"pid": c.pid, "type": "alloc", "duration_s": 300})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        attached(client, job_id)
        c.stop()
        assert client.delete(f"/profiles/{job_id}").status_code == 202
        done = wait_done(client, job_id, timeout=180)
    finally:
        c.stop()
    assert done["state"] == "succeeded", str(done["error"])[-3000:]
    meta = done["metadata"]
    assert isinstance(meta, dict) and meta["exited_pids"] == [c.pid]
    assert any("exited during the window" in n for n in meta["notes"]), meta["notes"]


def test_python_older_than_3_9_keeps_the_c_view(pod: podsim.SimPod, client: httpx.Client) -> None:
    if not os.path.exists(PY38):
        pytest.skip(f"{PY38} is not on this machine")
    c = app(pod, "pyalloc38", PY38, PY_ALLOC)
    try:
        r = client.post("/profiles?dry_run=true", json={"pid": c.pid, "type": "alloc"})
        assert r.status_code == 200, r.text
        mem = r.json()["plan"]["memory"]
        assert mem["python"] is None and mem["targets"][0]["allocator"] == "glibc", mem
        assert any("older than 3.9" in n for n in mem["notes"]), mem["notes"]
        # Leak profiles (tracemalloc) still enter it.
        r = client.post("/profiles?dry_run=true", json={"pid": c.pid, "type": "leak"})
        assert r.json()["plan"]["memory"]["python"] is not None
    finally:
        c.stop()


def test_python_frames_option_and_capabilities(pod: podsim.SimPod, client: httpx.Client) -> None:
    c = app(pod, "pyallocopt", PY312, PY_ALLOC)
    try:
        body = {"pid": c.pid, "type": "alloc", "python_frames": 4}
        r = client.post("/profiles?dry_run=true", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["plan"]["memory"]["python"]["frames"] == 4
        body["python_frames"] = 0  # the C-allocator view, asked for
        r = client.post("/profiles?dry_run=true", json=body)
        assert r.json()["plan"]["memory"]["python"] is None
        assert r.json()["plan"]["memory"]["targets"][0]["allocator"] == "glibc"
        for bad in (-1, 129):
            body["python_frames"] = bad
            r = client.post("/profiles", json=body)
            assert r.status_code == 422 and "python_frames" in r.text, r.text
    finally:
        c.stop()
    alloc = client.get("/capabilities").json()["profiling"]["types"]["alloc"]
    assert alloc["python_frames"]["available"], alloc
    assert "3.9" in alloc["python_frames"]["versions"], alloc
