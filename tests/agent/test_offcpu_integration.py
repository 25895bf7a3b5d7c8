"""Off-CPU profiles through the agent: the real bpftrace on sched_switch, a real
workload blocking 9:1 in two known functions, in the simulated pod."""

from __future__ import annotations

import gzip
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import httpx
import pytest

from tests import podsim
from tests.agent.test_profiles_integration import (
    check_pprof,
    folded_total,
    pod_processes,
    wait_done,
)
from tests.agent.workloads import OFFCPU_C, compile_c
from tests.conftest import need

pytestmark = pytest.mark.integration


@pytest.fixture
def client(agent: podsim.AgentHandle) -> Iterator[httpx.Client]:
    with agent.client() as c:
        yield c


@pytest.fixture(autouse=True)
def no_bpftrace_left(pod: podsim.SimPod, agent: podsim.AgentHandle) -> Iterator[None]:
    yield
    deadline = time.monotonic() + 15
    while pod_processes(pod, "bpftrace") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pod_processes(pod, "bpftrace") == [], "a bpftrace process was left running"
    assert list(agent.data_dir.rglob("*.part")) == [], "half-written artifacts left behind"


@pytest.fixture(scope="module")
def blocker(pod: podsim.SimPod, tmp_path_factory: pytest.TempPathFactory) -> podsim.Container:
    need("bpftrace", "gcc")
    binary = compile_c(OFFCPU_C, tmp_path_factory.mktemp("offcpu") / "blocker")
    return pod.run("blocker", ["/srv/blocker"], files={"blocker": binary})


def test_offcpu_known_function_dominates(client: httpx.Client, blocker: podsim.Container) -> None:
    r = client.post("/profiles", json={"type": "off-cpu", "pid": blocker.pid, "duration_s": 3})
    assert r.status_code == 202, r.text
    done = wait_done(client, r.json()["id"], timeout=90)
    assert done["state"] == "succeeded", done
    job_id = done["id"]
    meta = done["metadata"]
    assert isinstance(meta, dict) and meta["plan"]["type"] == "off-cpu"
    assert "tracepoint:sched:sched_switch" in meta["plan"]["program"]
    assert meta["sampling_weight"] == 1  # ~200 switches/s: every one recorded
    stacks = folded_total(client.get(f"/profiles/{job_id}/folded").text)
    # Weighted by time: the worker thread was off CPU for about the whole 3 s.
    worker = {s: n for s, n in stacks.items() if "worker_loop" in s}
    total = sum(worker.values())
    assert 2.0e6 < total < 4.5e6, total  # microseconds
    sleep = sum(n for s, n in worker.items() if "sleep_function" in s)
    lock = sum(n for s, n in worker.items() if "lock_function" in s)
    assert 0.8 <= sleep / total <= 0.96, (sleep, lock, total)
    assert lock / total >= 0.03, (sleep, lock, total)
    # User and kernel stacks at the moment it went off CPU: root (comm) first, the
    # user frames, then the kernel's down to the scheduler.
    top = max(worker, key=lambda s: worker[s])
    frames = top.split(";")
    assert frames[0] == "blocker" and frames[-1] == "__schedule", top
    assert frames.index("sleep_function") < frames.index("do_syscall_64"), top
    # The five outputs, and the SVG says what its widths mean.
    svg = client.get(f"/profiles/{job_id}/flamegraph.svg").content
    assert b"widths: time off CPU" in svg and b"microseconds off CPU" in svg
    ET.fromstring(svg)
    sc = client.get(f"/profiles/{job_id}/speedscope.json").json()
    assert any("sleep_function" in f["name"] for f in sc["shared"]["frames"])
    pb = client.get(f"/profiles/{job_id}/profile.pb.gz").content
    check_pprof(pb, "sleep_function")
    assert b"off_cpu" in gzip.decompress(pb)
    raw = client.get(f"/profiles/{job_id}/bpftrace.json").text
    assert any(json.loads(line).get("type") == "map" for line in raw.splitlines() if line)
    assert client.get(f"/profiles/{job_id}/perf.data").status_code == 404
    assert done["links"]["bpftrace_output"] == f"/profiles/{job_id}/bpftrace.json"  # type: ignore[index]
    # Collapse options are for perf's stacks.
    r = client.get(f"/profiles/{job_id}/folded", params={"pid": "true"})
    assert r.status_code == 409 and "off-cpu" in r.json()["detail"]
    # Off-CPU and CPU profiles do not diff.
    cpu = client.post("/profiles", json={"pid": blocker.pid, "duration_s": 0.5}).json()["id"]
    wait_done(client, cpu)
    r = client.get("/profiles/diff", params={"base": cpu, "target": job_id})
    assert r.status_code == 409 and "same type" in r.json()["detail"]


def test_offcpu_stopped_early_keeps_what_was_recorded(
    client: httpx.Client, blocker: podsim.Container
) -> None:
    r = client.post("/profiles", json={"type": "off-cpu", "pid": blocker.pid, "duration_s": 60})
    job_id = r.json()["id"]
    time.sleep(3)
    assert client.delete(f"/profiles/{job_id}").status_code == 202
    done = wait_done(client, job_id, timeout=60)
    assert done["state"] == "succeeded" and done["metadata"]["stopped_early"] is True, done  # type: ignore[index]
    assert sum(folded_total(client.get(f"/profiles/{job_id}/folded").text).values()) > 0


def test_offcpu_bad_input(client: httpx.Client, blocker: podsim.Container) -> None:
    base = {"type": "off-cpu", "pid": blocker.pid}
    r = client.post("/profiles", json={**base, "frequency_hz": 99})
    assert r.status_code == 422 and "cpu profiles only" in r.json()["detail"]
    r = client.post("/profiles", json={**base, "call_graph": "dwarf"})
    assert r.status_code == 422 and "auto or fp" in r.json()["detail"]
    r = client.post("/profiles", json={**base, "duration_s": 100000})
    assert r.status_code == 422 and "between" in r.json()["detail"]
    r = client.post("/profiles", json={"type": "wall", "pid": blocker.pid})
    assert r.status_code == 422 and "off-cpu" in r.json()["detail"]
    r = client.post("/profiles?dry_run=true", json=base)
    assert r.status_code == 200 and r.json()["plan"]["argv"][0] == "bpftrace"


def test_capabilities_name_the_types(client: httpx.Client) -> None:
    caps = client.get("/capabilities").json()
    types = caps["profiling"]["types"]
    assert types["cpu"] and types["off-cpu"]["available"] is True, types
