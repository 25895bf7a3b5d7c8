"""Memory profiles (alloc, leak) through the agent: the real bpftrace on the real C
allocator of a program allocating known byte counts from two named functions, in the
simulated pod."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import podsim
from tests.agent.memory_profile_workloads import (
    ALLOC_C,
    ALLOC_C_FLAGS,
    BALANCED_BYTES,
    JAVA_ALLOC,
    JAVA_BIG_BYTES,
    JAVA_ROUNDS,
    LEAKY_BYTES,
    PY_BLOCK,
    PY_MEMORY,
    PY_ROUNDS,
    ROUNDS,
    STATIC_C,
)
from tests.agent.support import folded_total, half_written, pod_processes, wait_done
from tests.agent.workloads import build_java
from tests.conftest import need
from tests.interpreters import PY312

pytestmark = pytest.mark.integration


def _uprobes_of(path_part: str) -> list[str]:
    events = Path("/sys/kernel/tracing/uprobe_events")
    if not events.exists():
        return []
    return [ln for ln in events.read_text().splitlines() if path_part in ln]


@pytest.fixture(autouse=True)
def nothing_left(pod: podsim.SimPod, agent: podsim.AgentHandle) -> Iterator[None]:
    yield
    deadline = time.monotonic() + 15
    while pod_processes(pod, "bpftrace") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pod_processes(pod, "bpftrace") == [], "a bpftrace process was left running"
    assert half_written(agent.data_dir) == [], "half-written artifacts left behind"
    assert _uprobes_of("libc.so") == [], "a uprobe was left in tracefs"


def _build(tmp: Path, source: str, name: str, *flags: str) -> Path:
    src = tmp / f"{name}.c"
    src.write_text(source)
    out = tmp / name
    subprocess.run(["gcc", *flags, "-o", str(out), str(src)], check=True, timeout=120)
    return out


@pytest.fixture(scope="module")
def alloc_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("bpftrace", "gcc")
    return _build(tmp_path_factory.mktemp("memory"), ALLOC_C, "allocator", *ALLOC_C_FLAGS)


def _start(pod: podsim.SimPod, binary: Path, name: str, *args: str) -> podsim.Container:
    return _ready(pod.run(name, ["/srv/allocator", *args], files={"allocator": binary}))


def _ready(c: podsim.Container) -> podsim.Container:
    deadline = time.monotonic() + 30
    while "ready" not in c.log():
        assert time.monotonic() < deadline and c.alive(), c.log()
        time.sleep(0.05)
    return c


def _attached(client: httpx.Client, job_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 120
    while True:
        body: dict[str, object] = client.get(f"/profiles/{job_id}").json()
        meta = body["metadata"]
        assert isinstance(meta, dict)
        if meta.get("attached"):
            return body
        assert body["state"] in ("pending", "running"), str(body["error"])[-2500:]
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


def _work(client: httpx.Client, c: podsim.Container, job_id: str) -> None:
    """Once the probes are in: the rounds, then wait for them to end."""
    _attached(client, job_id)
    os.kill(c.host_pid, signal.SIGUSR1)
    deadline = time.monotonic() + 240
    while "done" not in c.log():
        assert time.monotonic() < deadline, c.log()
        time.sleep(0.1)


def _profile(client: httpx.Client, c: podsim.Container, **body: object) -> dict[str, object]:
    r = client.post("/profiles", json={"pid": c.pid, "duration_s": 300, **body})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    _work(client, c, job_id)
    # Stop: what was recorded is kept.
    assert client.delete(f"/profiles/{job_id}").status_code == 202
    done = wait_done(client, job_id, timeout=120)
    assert done["state"] == "succeeded", str(done["error"])[-3000:]
    return done


_DONE: dict[str, str] = {}  # the profiles the diff test compares


def _under(stacks: dict[str, int], function: str) -> int:
    return sum(n for s, n in stacks.items() if function in s.split(";"))


def test_alloc_attributes_bytes_to_each_function(
    pod: podsim.SimPod, client: httpx.Client, alloc_binary: Path
) -> None:
    c = _start(pod, alloc_binary, "alloc")
    try:
        done = _profile(client, c, type="alloc")
    finally:
        c.stop()
    job_id = done["id"]
    meta = done["metadata"]
    assert isinstance(meta, dict)
    assert meta["plan"]["type"] == "alloc" and meta["plan"]["memory"]["period"] == 16
    assert "uprobe:" in meta["plan"]["program"]
    stacks = folded_total(client.get(f"/profiles/{job_id}/folded").text)
    balanced, leaky = _under(stacks, "balanced_work"), _under(stacks, "leaky_work")
    assert balanced and leaky, (stacks, meta["memory"], meta["notes"])
    # Within 10% of the truth once the sampling (1 in 16, weighted 16) is accounted for.
    assert abs(balanced - ROUNDS * BALANCED_BYTES) <= 0.1 * ROUNDS * BALANCED_BYTES, balanced
    assert abs(leaky - ROUNDS * LEAKY_BYTES) <= 0.1 * ROUNDS * LEAKY_BYTES, leaky
    # The allocating function sits right above malloc (the caller the walk skips).
    top = max((s for s in stacks if "leaky_work" in s), key=lambda s: stacks[s])
    assert top.endswith("leaky_work;malloc") and top.startswith("alloc"), top
    # Counted exactly, too: every malloc of the rounds.
    mem = meta["memory"]
    assert mem["allocations_counted"] >= ROUNDS * (64 + 16), mem
    counts = folded_total(client.get(f"/profiles/{job_id}/folded?weight=count").text)
    assert abs(_under(counts, "leaky_work") - ROUNDS * 16) <= 0.1 * ROUNDS * 16
    svg = client.get(f"/profiles/{job_id}/flamegraph.svg").content
    assert b"bytes" in svg and b"leaky_work" in svg
    ET.fromstring(svg)
    assert b"allocations" in client.get(f"/profiles/{job_id}/flamegraph.svg?weight=count").content
    pb = gzip.decompress(client.get(f"/profiles/{job_id}/profile.pb.gz").content)
    assert b"alloc_space" in pb and b"alloc_objects" in pb
    sc = client.get(f"/profiles/{job_id}/speedscope.json").json()
    assert sc["profiles"][0]["unit"] == "bytes"
    assert "bpftrace_output" in done["links"]
    _DONE["alloc"] = str(job_id)


def test_leak_puts_outstanding_bytes_under_the_leaking_function(
    pod: podsim.SimPod, client: httpx.Client, alloc_binary: Path
) -> None:
    c = _start(pod, alloc_binary, "leak")
    try:
        done = _profile(client, c, type="leak")
    finally:
        c.stop()
    job_id = done["id"]
    stacks = folded_total(client.get(f"/profiles/{job_id}/folded").text)
    total = sum(stacks.values())
    leaky, balanced = _under(stacks, "leaky_work"), _under(stacks, "balanced_work")
    assert leaky >= 0.9 * total, (leaky, total)
    assert balanced == 0, stacks
    assert abs(leaky - ROUNDS * LEAKY_BYTES) <= 0.1 * ROUNDS * LEAKY_BYTES, leaky
    pb = gzip.decompress(client.get(f"/profiles/{job_id}/profile.pb.gz").content)
    assert b"inuse_space" in pb
    meta = done["metadata"]
    assert isinstance(meta, dict) and meta["memory"]["dropped"] == 0
    # scripts/setup's bpftrace has offset support: free is probed past glibc's
    # `test %rdi,%rdi` (bookworm's glibc), and no free was missed there (balanced == 0).
    assert ":free+3" in meta["plan"]["program"], meta["plan"]["program"]
    _DONE["leak"] = str(job_id)


def test_leak_bounded_map_counts_drops(
    pod: podsim.SimPod, client: httpx.Client, alloc_binary: Path
) -> None:
    c = _start(pod, alloc_binary, "drops")
    try:
        done = _profile(client, c, type="leak", max_outstanding=500)
    finally:
        c.stop()
    meta = done["metadata"]
    assert isinstance(meta, dict)
    # ~2000 sampled leaks, 500 tracked at most: the rest are counted, and said.
    assert meta["memory"]["dropped"] > 1000, meta["memory"]
    assert any("not tracked" in n for n in meta["notes"]), meta["notes"]


def test_target_exiting_mid_profile_keeps_what_was_recorded(
    pod: podsim.SimPod, client: httpx.Client, alloc_binary: Path
) -> None:
    c = _start(pod, alloc_binary, "exits", "exit")
    r = client.post("/profiles", json={"pid": c.pid, "duration_s": 300, "type": "alloc"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    _work(client, c, job_id)
    c.stop()  # it has exited by itself already; reaped here
    assert client.delete(f"/profiles/{job_id}").status_code == 202
    done = wait_done(client, job_id, timeout=120)
    assert done["state"] == "succeeded", str(done["error"])[-3000:]
    meta = done["metadata"]
    assert isinstance(meta, dict) and meta["exited_pids"] == [c.pid]
    stacks = folded_total(client.get(f"/profiles/{job_id}/folded").text)
    # Named from the symbols read when it started.
    assert _under(stacks, "leaky_work") > 0, stacks


def test_no_allocator_symbols_says_so(
    pod: podsim.SimPod, client: httpx.Client, tmp_path: Path
) -> None:
    need("gcc")
    binary = _build(tmp_path, STATIC_C, "static", "-O1", "-static", "-s")
    c = pod.run("static", ["/srv/static"], files={"static": binary})
    try:
        r = client.post("/profiles", json={"pid": c.pid, "type": "leak", "duration_s": 2})
        assert r.status_code == 409, r.text
        assert "no allocator symbols" in r.json()["detail"], r.text
        assert "statically linked and stripped" in r.json()["detail"], r.text
        plan = client.post("/profiles?dry_run=true", json={"pid": c.pid, "type": "alloc"})
        assert plan.status_code == 409, plan.text
    finally:
        c.stop()


def test_dry_run_bad_input_and_cancel_leave_nothing(
    pod: podsim.SimPod, client: httpx.Client, alloc_binary: Path
) -> None:
    c = _start(pod, alloc_binary, "plan")
    try:
        r = client.post("/profiles?dry_run=true", json={"pid": c.pid, "type": "leak"})
        assert r.status_code == 200, r.text
        mem = r.json()["plan"]["memory"]
        assert mem["targets"][0]["allocator"] == "glibc", mem
        assert "free" in mem["targets"][0]["functions"], mem
        assert mem["sampling"].startswith("every allocation of 65536 bytes or more")
        assert any("traps" in n for n in mem["notes"]), mem
        for bad in (
            {"type": "alloc", "frequency_hz": 99},
            {"type": "alloc", "max_outstanding": 10},
            {"type": "alloc", "call_graph": "dwarf"},
            {"type": "cpu", "sample_period": 4},
            {"type": "leak", "sample_period": 0},
        ):
            r = client.post("/profiles", json={"pid": c.pid, **bad})
            assert r.status_code == 422, (bad, r.text)
        # Cancel while recording: bpftrace stops (the autouse fixture checks no bpftrace
        # and no uprobe are left), and the profile keeps what it had.
        r = client.post("/profiles", json={"pid": c.pid, "type": "leak", "duration_s": 300})
        job_id = r.json()["id"]
        _attached(client, job_id)
        assert client.delete(f"/profiles/{job_id}").status_code == 202
        done = wait_done(client, job_id, timeout=120)
        assert done["state"] == "succeeded" and done["metadata"]["stopped_early"], done
        cpu_like = client.get(f"/profiles/{job_id}/folded?weight=count")
        assert cpu_like.status_code == 200
        # Discarded while recording: removed at once, bpftrace stopped (the fixture checks).
        r = client.post("/profiles", json={"pid": c.pid, "type": "alloc", "duration_s": 300})
        job_id = r.json()["id"]
        _attached(client, job_id)
        assert client.delete(f"/profiles/{job_id}?discard=true").status_code == 204
        assert client.get(f"/profiles/{job_id}").status_code == 404
    finally:
        c.stop()


def test_capabilities_say_what_each_runtime_shows(client: httpx.Client) -> None:
    types = client.get("/capabilities").json()["profiling"]["types"]
    assert types["alloc"]["available"] and types["leak"]["available"], types
    assert "not with malloc" in types["alloc"]["runtimes"]["go"], types
    java = types["alloc"]["java_methods"]
    assert java["available"] and "async-profiler" in java["reason"], java
    assert java["library"].endswith("libasyncProfiler.so"), java


@pytest.mark.parametrize("kind", ["alloc"])
def test_python_growing_cache_vs_allocate_and_drop(
    pod: podsim.SimPod, client: httpx.Client, kind: str
) -> None:
    """The C-allocator view of a Python app, asked for with python_frames 0 (its 4 KiB
    buffers come from malloc): an alloc profile holds nine times what the cache kept (the
    churn). Python function names are not in this view; alloc and leak profiles of Python
    are in Python frames by default (tests/agent/test_python_alloc_integration.py,
    tests/agent/test_python_memory_integration.py)."""
    need("bpftrace")
    c = _ready(pod.run(f"py{kind}", [PY312, "/srv/app.py"], files={"app.py": PY_MEMORY.encode()}))
    try:
        done = _profile(client, c, type=kind, python_frames=0)
    finally:
        c.stop()
    meta = done["metadata"]
    assert isinstance(meta, dict)
    assert "pymalloc" in meta["plan"]["memory"]["targets"][0]["sees"]
    total = sum(folded_total(client.get(f"/profiles/{done['id']}/folded").text).values())
    kept = PY_ROUNDS * PY_BLOCK
    want = kept if kind == "leak" else 9 * kept
    assert abs(total - want) <= 0.1 * want, (kind, total, want, meta["memory"])


def test_diff_of_memory_profiles(client: httpx.Client) -> None:
    """Two memory profiles of one type compare (by bytes); an alloc and a leak do not."""
    if set(_DONE) != {"alloc", "leak"}:
        pytest.skip("needs the alloc and leak profiles of the tests above")
    a, leak = _DONE["alloc"], _DONE["leak"]
    r = client.get(f"/profiles/diff?base={a}&target={a}&format=svg")
    assert r.status_code == 200 and b"bytes" in r.content, r.text[:300]
    folded = client.get(f"/profiles/diff?base={a}&target={a}&format=folded").text
    assert "leaky_work;malloc" in folded
    r = client.get(f"/profiles/diff?base={a}&target={leak}")
    assert r.status_code == 409 and "same type" in r.json()["detail"], r.text


def _java_app(pod: podsim.SimPod, tmp_path: Path, name: str, *args: str) -> podsim.Container:
    need("java", "javac", "jattach", "bpftrace")
    cls = build_java(JAVA_ALLOC, tmp_path)
    return _ready(
        pod.run(name, ["java", "-cp", "/srv", "Chain", *args], files={"Chain.class": cls})
    )


def _java_round(c: podsim.Container, n: int) -> None:
    """Round n of the app's allocations, from now (the profile is recording), to its end."""
    Path(f"/proc/{c.host_pid}/root/tmp/chain-go-{n}").touch()
    deadline = time.monotonic() + 240
    while f"done {n}" not in c.log():
        assert time.monotonic() < deadline and (c.alive() or n == 1), c.log()
        time.sleep(0.1)


def _ours_in_jvm_tmp(c: podsim.Container) -> list[str]:
    return [p.name for p in Path(f"/proc/{c.host_pid}/root/tmp").glob("tracecar-async-profiler-*")]


def _profiler_libraries(c: podsim.Container) -> set[str]:
    maps = Path(f"/proc/{c.host_pid}/maps").read_text().splitlines()
    return {ln.split(maxsplit=5)[5] for ln in maps if "tracecar-async-profiler-" in ln}


def _profiler_active(c: podsim.Container) -> bool:
    """async-profiler's own answer (``status``), through the copy the JVM has loaded."""
    (lib,) = _profiler_libraries(c)
    log = f"/tmp/status-{os.getpid()}.log"
    subprocess.run(
        ["jattach", str(c.host_pid), "load", lib.removesuffix(" (deleted)"), "true",
         f"status,log={log}"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    host = Path(f"/proc/{c.host_pid}/root{log}")
    said = host.read_text()
    host.unlink()
    return "Profiling is running" in said


def _java_stacks(client: httpx.Client, job_id: object, weight: str = "bytes") -> dict[str, int]:
    folded = client.get(f"/profiles/{job_id}/folded?weight={weight}").text
    return {s: n for s, n in folded_total(folded).items() if ";[java];" in s}


def test_java_top_allocator_by_method(
    pod: podsim.SimPod, client: httpx.Client, tmp_path: Path
) -> None:
    """async-profiler's alloc mode names Java methods: the one allocating most bytes tops,
    by bytes and by samples; a second profile of the same JVM drives the copy the first
    loaded; one at a time; a cancel stops it; nothing is left in the JVM's /tmp."""
    c = _java_app(pod, tmp_path, "jalloc")
    try:
        plan = client.post("/profiles?dry_run=true", json={"pid": c.pid, "type": "alloc"})
        java = plan.json()["plan"]["memory"]["java_methods"]
        assert java["available"] and java["pids"] == [c.pid], java
        assert "one sample per 512 KiB" in java["sampling"], java
        r = client.post("/profiles", json={"pid": c.pid, "type": "alloc", "duration_s": 300})
        assert r.status_code == 202, r.text
        first = r.json()["id"]
        # The JVM's sampler starts before bpftrace attaches: recording from here.
        _attached(client, first)
        assert _ours_in_jvm_tmp(c) == [], "the library's copy is removed once loaded"
        # One session per JVM: a second profile meanwhile gets its native view only.
        r = client.post("/profiles", json={"pid": c.pid, "type": "alloc", "duration_s": 300})
        assert r.status_code == 202, r.text
        second = r.json()["id"]
        _attached(client, second)
        assert client.delete(f"/profiles/{second}").status_code == 202
        busy = wait_done(client, second, timeout=120)
        assert busy["state"] == "succeeded", str(busy["error"])[-2000:]
        assert any("already running" in n for n in busy["metadata"]["notes"]), busy["metadata"]
        assert _java_stacks(client, second) == {}
        _java_round(c, 1)
        assert client.delete(f"/profiles/{first}").status_code == 202
        done = wait_done(client, first, timeout=120)
        assert done["state"] == "succeeded", str(done["error"])[-2000:]
        meta = done["metadata"]
        java_bytes = _java_stacks(client, first)
        big, small = (
            _under(java_bytes, "Chain.bigAllocator"),
            _under(java_bytes, "Chain.smallAllocator"),
        )
        # The check: the method allocating most bytes is the top allocator.
        top = max(java_bytes, key=lambda s: java_bytes[s])
        assert top.endswith(";Chain.bigAllocator;byte[]"), (top, meta["notes"])
        assert top.startswith("java;[java];") and big > 0.9 * sum(java_bytes.values()), java_bytes
        # Sampled, yet unbiased: 94-96% of the truth in runs by hand (2,500 samples).
        truth = JAVA_ROUNDS * JAVA_BIG_BYTES
        assert 0.75 * truth <= big <= 1.25 * truth, (big, truth, small)
        counts = _java_stacks(client, first, "count")
        assert _under(counts, "Chain.bigAllocator") > 10 * _under(counts, "Chain.smallAllocator")
        assert any("async-profiler's alloc mode" in n for n in meta["notes"]), meta["notes"]
        assert _ours_in_jvm_tmp(c) == [] and len(_profiler_libraries(c)) == 1
        assert not _profiler_active(c)
        # Cancelled and discarded: the profiler is stopped all the same.
        r = client.post("/profiles", json={"pid": c.pid, "type": "alloc", "duration_s": 300})
        _attached(client, r.json()["id"])
        assert _profiler_active(c)
        assert client.delete(f"/profiles/{r.json()['id']}?discard=true").status_code == 204
        deadline = time.monotonic() + 60
        while _profiler_active(c):
            assert time.monotonic() < deadline, "a discarded profile left the profiler running"
            time.sleep(0.2)
        # Again: through the copy the JVM already has (it cannot load a second).
        r = client.post("/profiles", json={"pid": c.pid, "type": "alloc", "duration_s": 300})
        again = r.json()["id"]
        _attached(client, again)
        _java_round(c, 2)
        assert client.delete(f"/profiles/{again}").status_code == 202
        done = wait_done(client, again, timeout=120)
        assert done["state"] == "succeeded", str(done["error"])[-2000:]
        notes = done["metadata"]["notes"]
        assert any("driven through the copy an earlier profile loaded" in n for n in notes), notes
        java_bytes = _java_stacks(client, again)
        top = max(java_bytes, key=lambda s: java_bytes[s])
        assert top.endswith(";Chain.bigAllocator;byte[]"), (top, notes)
        assert _ours_in_jvm_tmp(c) == [] and len(_profiler_libraries(c)) == 1
        assert not _profiler_active(c)
    finally:
        c.stop()


def test_java_exiting_mid_profile_keeps_its_samples(
    pod: podsim.SimPod, client: httpx.Client, tmp_path: Path
) -> None:
    """A JVM that exits before the profile ends writes its samples at its shutdown (by
    bytes); the agent still reads them from the JVM's /tmp, gone with the JVM but held."""
    c = _java_app(pod, tmp_path, "jexit", "exit")
    r = client.post("/profiles", json={"pid": c.pid, "type": "alloc", "duration_s": 300})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    try:
        _attached(client, job_id)
        _java_round(c, 1)
        deadline = time.monotonic() + 60
        while c.alive():
            assert time.monotonic() < deadline, c.log()
            time.sleep(0.1)
    finally:
        c.stop()
    assert client.delete(f"/profiles/{job_id}").status_code == 202
    done = wait_done(client, job_id, timeout=120)
    assert done["state"] == "succeeded", str(done["error"])[-2000:]
    meta = done["metadata"]
    assert meta["exited_pids"] == [c.pid], meta
    java_bytes = _java_stacks(client, job_id)
    top = max(java_bytes, key=lambda s: java_bytes[s]) if java_bytes else None
    assert top and top.endswith(";Chain.bigAllocator;byte[]"), (top, meta["notes"])
    assert any("exited during the profile" in n for n in meta["notes"]), meta["notes"]


def test_java_with_its_own_async_profiler_is_left_alone(
    pod: podsim.SimPod, client: httpx.Client, tmp_path: Path
) -> None:
    """A JVM started with its own async-profiler (-agentpath) gets no second copy: the
    profile says so and keeps the JVM's native view."""
    need("java", "javac", "jattach", "bpftrace")
    lib = client.get("/capabilities").json()["profiling"]["types"]["alloc"]["java_methods"]
    cls = build_java(JAVA_ALLOC, tmp_path)
    files = {"Chain.class": cls, "libasyncProfiler.so": Path(lib["library"])}
    argv = ["java", "-agentpath:/srv/libasyncProfiler.so", "-cp", "/srv", "Chain"]
    c = _ready(pod.run("jown", argv, files=files))
    try:
        r = client.post("/profiles", json={"pid": c.pid, "type": "alloc", "duration_s": 300})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        _attached(client, job_id)
        assert client.delete(f"/profiles/{job_id}").status_code == 202
        done = wait_done(client, job_id, timeout=120)
        assert done["state"] == "succeeded", str(done["error"])[-2000:]
        notes = done["metadata"]["notes"]
        assert any(
            "already has its own async-profiler loaded (/srv/libasyncProfiler.so): left alone" in n
            for n in notes
        ), notes
        assert _java_stacks(client, job_id) == {}
        assert _profiler_libraries(c) == set() and _ours_in_jvm_tmp(c) == []
    finally:
        c.stop()
