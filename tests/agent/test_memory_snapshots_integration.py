"""Memory through the agent, with real tools in the simulated pod: snapshots of a C
program holding a known amount (smaps), a CPython cache (gdb reads pymalloc), a JVM
(jattach: heap, class histogram); heap dumps (the JVM's .hprof, opened and checked;
gcore's core, opened by gdb); a dump bigger than the free space refused before
writing (an agent whose data volume is a small tmpfs); the flight recorder's RSS;
a trigger firing on an RSS threshold; bad pids and bad requests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import podsim
from tests.agent.memory_snapshot_workloads import (
    HOLD_C,
    MARKER,
    PY_CACHE,
    build_hog,
)
from tests.agent.support import half_written
from tests.agent.workloads import compile_c
from tests.conftest import need
from tests.interpreters import PY312

pytestmark = pytest.mark.integration

MI = 1 << 20
SMALL_TMPFS_MIB = 80


@pytest.fixture(scope="module")
def small_volume() -> Iterator[Path]:
    """A small tmpfs for an agent's data volume, mounted before the pod starts (the
    pod's mount namespace is a private copy of the host's at that moment)."""
    path = Path(tempfile.mkdtemp(prefix="tracecar-small-", dir="/var/tmp"))
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_TMPFS_MIB}m", "small-agent-data", str(path)],
        check=True,
        timeout=30,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def pod(small_volume: Path) -> Iterator[podsim.SimPod]:
    with podsim.sim_pod() as p:
        yield p


@pytest.fixture
def client(agent: podsim.AgentHandle) -> Iterator[httpx.Client]:
    with agent.client() as c:
        yield c


@pytest.fixture(scope="module")
def small_agent(pod: podsim.SimPod, small_volume: Path) -> podsim.AgentHandle:
    return podsim.start_agent(pod, env={"TRACECAR_AGENT_DATA_DIR": str(small_volume / "data")})


@pytest.fixture(scope="module")
def hold_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("gcc", "gdb")
    return compile_c(HOLD_C, tmp_path_factory.mktemp("hold") / "hold")


@pytest.fixture(scope="module")
def hog_class(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("java", "javac", "jattach")
    return build_hog(tmp_path_factory.mktemp("hog"))


@pytest.fixture(scope="module")
def hog(pod: podsim.SimPod, hog_class: Path) -> podsim.Container:
    app = pod.run(
        "hog", ["java", "-Xmx512m", "-cp", "/srv", "Hog", "64"], files={"Hog.class": hog_class}
    )
    wait_until(lambda: "ready" in app.log(), 60, "the JVM to allocate", app)
    return app


@pytest.fixture(scope="module")
def holder(pod: podsim.SimPod, hold_binary: Path) -> podsim.Container:
    app = pod.run("holder", ["/srv/hold", "48", "0"], files={"hold": hold_binary})
    wait_until(lambda: rss(app.host_pid) >= 48 * MI, 20, "the program to touch its memory", app)
    return app


def wait_until(pred: Any, timeout: float, what: str, app: podsim.Container | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out waiting for {what}" + (f": {app.log()}" if app else "")
            )
        time.sleep(0.1)


def rss(host_pid: int) -> int:
    try:
        return int(Path(f"/proc/{host_pid}/statm").read_text().split()[1]) * os.sysconf(
            "SC_PAGE_SIZE"
        )
    except OSError:
        return 0


def dump(client: httpx.Client, pid: int, body: dict[str, Any] | None = None) -> dict[str, Any]:
    r = client.post(f"/processes/{pid}/heapdump", params={"wait": "true"}, json=body or {})
    assert r.status_code == 200, r.text
    job: dict[str, Any] = r.json()
    assert job["state"] == "succeeded", job
    return job


# --- snapshots ---------------------------------------------------------------------


def test_snapshot_of_a_program_holding_48_mib(
    client: httpx.Client, holder: podsim.Container
) -> None:
    r = client.get(f"/processes/{holder.pid}/memory", params={"top": 5})
    assert r.status_code == 200, r.text
    snap = r.json()
    assert snap["pid"] == holder.pid and snap["container"] == "holder"
    t = snap["totals"]
    assert t["rss_bytes"] >= 48 * MI and t["anonymous_bytes"] >= 48 * MI, t
    assert t["pss_bytes"] >= 48 * MI and t["file_bytes"] == t["rss_bytes"] - t["anonymous_bytes"]
    assert t["swap_bytes"] >= 0 and snap["mappings"] > 5
    biggest = snap["largest_mappings"][0]
    # glibc serves 48 MiB with its own mmap: one anonymous mapping, all resident.
    assert biggest["kind"] == "anon" and biggest["rss_bytes"] >= 48 * MI, biggest
    assert len(snap["largest_mappings"]) == 5
    kinds = {k["kind"]: k for k in snap["by_kind"]}
    assert kinds["anon"]["rss_bytes"] >= 48 * MI and kinds["file"]["mappings"] >= 1
    rt = snap["runtime_memory"]
    assert rt["runtime"] == "native" and rt["available"] is False and "native" in rt["reason"]
    # /proc only: no runtime section.
    assert (
        client.get(f"/processes/{holder.pid}/memory?runtime=false").json()["runtime_memory"] is None
    )


def test_snapshot_of_a_python_cache_reads_pymalloc(
    pod: podsim.SimPod, client: httpx.Client
) -> None:
    need("gdb")
    if not Path(PY312).exists():
        pytest.fail(f"{PY312} is missing: scripts/setup installs it")
    app = pod.run("pycache", [PY312, "-u", "/srv/cache.py"], files={"cache.py": PY_CACHE})
    stripped = pod.run(
        "pystripped", ["/usr/bin/python3", "-u", "/srv/cache.py"], files={"cache.py": PY_CACHE}
    )
    try:
        wait_until(lambda: "ready" in app.log(), 30, "the cache", app)
        wait_until(lambda: "ready" in stripped.log(), 30, "the cache", stripped)
        # Read live from /proc/PID/mem: no ptrace attach, so a process another tracer
        # holds (a debugger, py-spy) is read all the same, and never stopped.
        with held_by_a_tracer(app.host_pid):
            r = client.get(f"/processes/{app.pid}/memory", params={"histogram_top": 3})
        assert r.status_code == 200, r.text
        rt = r.json()["runtime_memory"]
        assert rt["available"] is True, rt
        alloc = rt["python_allocator"]
        assert alloc["python_version"] == "3.12"
        # 300,000 tuples of two (56 bytes: the 64-byte size class) at least.
        sizes = {c["block_bytes"]: c["blocks"] for c in alloc["size_classes"]}
        assert sizes.get(64, 0) >= 300_000, alloc["size_classes"]
        assert alloc["bytes_in_use"] >= 300_000 * 64 and alloc["arenas"] >= 18
        assert alloc["held_bytes"] == alloc["arenas"] * alloc["arena_bytes"]
        assert len(alloc["size_classes"]) <= 3
        assert app.alive()
        # Asked again, the layout is known: the same figures (the cache holds still).
        again = client.get(f"/processes/{app.pid}/memory").json()["runtime_memory"]
        assert again["python_allocator"]["arenas"] == alloc["arenas"]

        # Debian's python3 is stripped: said, not guessed.
        rt = client.get(f"/processes/{stripped.pid}/memory").json()["runtime_memory"]
        assert rt["available"] is False and "debug info" in rt["reason"], rt
    finally:
        app.stop()
        stripped.stop()


# A tracer that holds a process without stopping it (PTRACE_SEIZE), until it exits.
_SEIZE = (
    "import ctypes, sys, time\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "assert libc.ptrace(0x4206, int(sys.argv[1]), 0, 0) == 0, ctypes.get_errno()\n"
    "print('seized', flush=True)\n"
    "time.sleep(600)\n"
)


@contextlib.contextmanager
def held_by_a_tracer(host_pid: int) -> Iterator[None]:
    """While this lasts, ``host_pid`` has a tracer (one at most: any ptrace-based
    reader of it would fail) and keeps running."""
    tracer = subprocess.Popen(
        [sys.executable, "-c", _SEIZE, str(host_pid)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert tracer.stdout is not None and tracer.stdout.readline().strip() == "seized"
        assert f"TracerPid:\t{tracer.pid}" in Path(f"/proc/{host_pid}/status").read_text()
        yield
    finally:
        tracer.kill()
        tracer.wait(10)


def test_snapshot_of_a_jvm_and_its_class_histogram(
    client: httpx.Client, hog: podsim.Container
) -> None:
    r = client.get(f"/processes/{hog.pid}/memory", params={"histogram_top": 5})
    assert r.status_code == 200, r.text
    snap = r.json()
    rt = snap["runtime_memory"]
    assert rt["available"] is True, rt
    heap = rt["java_heap"]
    assert heap["used_bytes"] >= 64 * MI and heap["committed_bytes"] >= heap["used_bytes"]
    histo = rt["class_histogram"]
    top = histo["entries"][0]
    assert top["class_name"] == "[B" and top["bytes"] >= 64 * MI and top["instances"] >= 64
    assert len(histo["entries"]) == 5 and histo["live"] is False
    assert snap["totals"]["rss_bytes"] >= 64 * MI

    r = client.get(f"/processes/{hog.pid}/memory/class-histogram", params={"top": 3, "live": True})
    assert r.status_code == 200, r.text
    live = r.json()
    assert live["live"] is True and len(live["entries"]) == 3
    assert live["entries"][0]["class_name"] == "[B" and live["entries"][0]["bytes"] >= 64 * MI
    assert live["total_bytes"] >= live["entries"][0]["bytes"]


# --- dumps -----------------------------------------------------------------------------


def test_java_heap_dump_is_an_hprof(
    client: httpx.Client, hog: podsim.Container, tmp_path: Path
) -> None:
    job = dump(client, hog.pid)
    assert job["format"] == "hprof" and job["type"] == "heap"
    assert job["writer"] == "jattach dumpheap (live objects)"
    assert job["links"]["hprof"] == f"/dumps/{job['id']}/heap.hprof"
    # The estimate (from the class histogram) bounds what was written.
    assert 64 * MI <= job["result"]["bytes"] <= job["result"]["estimate"]["bytes"], job["result"]
    r = client.get(job["links"]["hprof"])
    assert r.status_code == 200
    assert r.content[:19] == b"JAVA PROFILE 1.0.2\0"
    assert len(r.content) == job["result"]["bytes"]
    assert f"heap.{hog.pid}.hprof" in r.headers["content-disposition"]
    # The JVM wrote it into its own /tmp; the agent moved it out.
    assert not any(
        n.startswith("tracecar-heap-") for n in os.listdir(f"/proc/{hog.host_pid}/root/tmp")
    )
    # The other format's link says where the file is.
    r = client.get(f"/dumps/{job['id']}/core")
    assert r.status_code == 404 and "heap.hprof" in r.json()["detail"]
    assert client.delete(f"/dumps/{job['id']}").status_code == 204


def test_core_dump_opened_by_gdb(
    client: httpx.Client, holder: podsim.Container, hold_binary: Path, tmp_path: Path
) -> None:
    job = dump(client, holder.pid)
    assert job["format"] == "core" and job["writer"] == "gdb gcore" and "core" in job["links"]
    core = tmp_path / "core"
    core.write_bytes(client.get(job["links"]["core"]).content)
    assert core.read_bytes()[:4] == b"\x7fELF"
    out = subprocess.run(
        ["gdb", "-nx", "-batch", "-ex", "print/x tracecar_marker", str(hold_binary), str(core)],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "Core was generated by" in out and f"= {MARKER:#x}" in out, out
    assert client.delete(f"/dumps/{job['id']}").status_code == 204


def test_dump_bigger_than_the_free_space_is_refused_before_writing(
    small_agent: podsim.AgentHandle,
    small_volume: Path,
    hog: podsim.Container,
    holder: podsim.Container,
) -> None:
    data = small_volume
    with small_agent.client() as c:
        for pid, body in ((hog.pid, {}), (holder.pid, {}), (hog.pid, {"type": "full"})):
            r = c.post(f"/processes/{pid}/heapdump", json=body, params={"wait": "true"})
            assert r.status_code == 409, r.text
            err = r.json()
            assert "nothing was written" in err["detail"] and "free" in err["detail"], err
            est = err["estimate"]
            assert (
                est["bytes"] + (64 << 20) > est["free_bytes"]
                # the small volume's free space (all of it, when nothing is stored yet)
                and est["free_bytes"] <= SMALL_TMPFS_MIB * MI
            )
        assert c.get("/dumps").json() == []
    # Not the agent's own state: its LTTng capability may still be building its
    # babeltrace plugin (a .part under lttng/_home) on a busy machine.
    leftovers = [p for p in data.rglob("*") if "dump" in str(p) or p.suffix == ".hprof"]
    assert leftovers + half_written(data) == []
    assert not any(
        n.startswith("tracecar-heap-") for n in os.listdir(f"/proc/{hog.host_pid}/root/tmp")
    )


# --- the recorder and triggers ---------------------------------------------------------


def test_recorder_samples_rss_with_the_stacks(
    pod: podsim.SimPod, client: httpx.Client, hold_binary: Path
) -> None:
    need("bpftrace")
    app = pod.run("grower", ["/srv/hold", "8", "4"], files={"hold": hold_binary})
    try:
        r = client.post("/recorder", json={"pid": app.pid})
        assert r.status_code == 201, r.text
        # An idle process: its seconds complete all the same (with its RSS).
        wait_until(lambda: client.get("/recorder").json()["window"], 30, "a first second")
        started = time.time()
        os.kill(app.host_pid, signal.SIGUSR1)  # 4 MiB every 250 ms
        wait_until(lambda: rss(app.host_pid) >= 40 * MI, 30, "growth", app)
        os.kill(app.host_pid, signal.SIGUSR1)  # stop
        time.sleep(0.3)  # a step already under way ends
        grown, stopped_at = rss(app.host_pid), time.time()
        # A second that began after the stop is complete: its RSS was read after it.
        wait_until(
            lambda: (client.get("/recorder").json()["complete_until"] or 0) >= stopped_at + 2,
            30,
            "the ring to catch up",
        )
        status = client.get("/recorder").json()
        trend = next(t for t in status["rss"] if t["pid"] == app.pid)
        assert trend["comm"] == "hold" and trend["growth_bytes"] >= 24 * MI, trend

        frm, to = started - 5, stopped_at + 2
        r = client.get("/recorder/memory", params={"from": frm, "to": to})
        assert r.status_code == 200, r.text
        proc = next(p for p in r.json()["processes"] if p["pid"] == app.pid)
        series = [b for _, b in proc["series"]]
        assert series == sorted(series), series  # it only grew
        assert series[0] < 24 * MI and abs(series[-1] - grown) <= 256 << 10, (series, grown)
        assert proc["growth_mib_per_min"] > 0 and proc["max_bytes"] == series[-1]
        seconds = [s for s, _ in proc["series"]]
        assert seconds == list(range(seconds[0], seconds[-1] + 1))  # one a second, no gap

        r = client.get("/recorder/profile", params={"from": frm, "to": to, "format": "svg"})
        assert r.status_code == 200
        assert int(r.headers["x-tracecar-rss-last"]) >= grown - 4 * MI
        assert float(r.headers["x-tracecar-rss-growth-mib-per-min"]) > 0
        assert "RSS " in r.text and "MiB/min" in r.text
        r = client.get("/recorder/profile", params={"from": frm, "to": to, "format": "speedscope"})
        assert r.json()["tracecar"]["rss"][0]["pid"] == app.pid
    finally:
        client.delete("/recorder")
        app.stop()


def test_trigger_fires_on_an_rss_threshold(
    pod: podsim.SimPod, client: httpx.Client, hold_binary: Path
) -> None:
    need("perf")
    app = pod.run("leaky", ["/srv/hold", "8", "4"], files={"hold": hold_binary})
    body = {
        "pid": app.pid,
        "rss_mib": 32,
        "for_s": 1,
        "profile": {"duration_s": 1},
        "max_captures": 1,
    }
    r = client.post("/triggers", json=body)
    assert r.status_code == 201, r.text
    tid = r.json()["id"]
    try:
        time.sleep(2)  # 8 MiB: under the threshold, nothing fires
        t = client.get(f"/triggers/{tid}").json()
        assert t["captures"] == [] and t["condition"] == "rss" and t["rss_mib_now"] < 32, t
        os.kill(app.host_pid, signal.SIGUSR1)
        t = wait_until(
            lambda: (lambda t: t if t["captures"] else None)(client.get(f"/triggers/{tid}").json()),
            30,
            "the trigger to fire",
            app,
        )
        cap = t["captures"][0]
        assert cap["rss_mib"] >= 32 and t["reason"] == "rss >= 32MiB for 1s", t
        job = wait_until(
            lambda: (lambda j: j if j["state"] in ("succeeded", "failed") else None)(
                client.get(f"/profiles/{cap['profile_id']}").json()
            ),
            60,
            "the capture",
        )
        assert job["state"] == "succeeded", job
        assert client.get(f"/profiles/{cap['profile_id']}/folded").status_code == 200
        wait_until(lambda: client.get(f"/triggers/{tid}").json()["state"] == "done", 30, "done")
    finally:
        client.delete(f"/triggers/{tid}")
        app.stop()


# --- bad input ---------------------------------------------------------------------------


def test_bad_pids_and_requests(client: httpx.Client, holder: podsim.Container) -> None:
    for path in ("/processes/999999/memory", "/processes/999999/memory/class-histogram"):
        r = client.get(path)
        assert r.status_code == 404 and "no process with pid 999999" in r.json()["detail"], r.text
    r = client.post("/processes/999999/heapdump", json={})
    assert r.status_code == 404 and "999999" in r.json()["detail"]
    for path in ("/processes/0/memory", "/processes/-3/memory", "/processes/abc/memory"):
        r = client.get(path)
        assert r.status_code == 422 and r.json()["detail"].startswith("pid:"), r.text
    r = client.get(f"/processes/{holder.pid}/memory", params={"top": 0})
    assert r.status_code == 422 and "top" in r.json()["detail"]
    r = client.get(f"/processes/{holder.pid}/memory/class-histogram")
    assert r.status_code == 409 and "not a JVM" in r.json()["detail"]
    r = client.post(f"/processes/{holder.pid}/heapdump", json={"type": "mini"})
    assert r.status_code == 422 and r.json()["field"] == "type"
    r = client.post(f"/processes/{holder.pid}/heapdump", json={"livee": True})
    assert r.status_code == 422 and "livee" in r.json()["detail"]
    for body in ({"pid": holder.pid}, {"pid": holder.pid, "rss_mib": 5, "cpu_percent": 10}):
        r = client.post("/triggers", json=body)
        assert r.status_code == 422 and "exactly one condition" in r.json()["detail"], r.text
    r = client.post(
        "/triggers", json={"pid": holder.pid, "rss_growth_mib_per_min": 5, "for_s": 0.5}
    )
    assert r.status_code == 422 and r.json()["field"] == "for_s"
    r = client.get("/recorder/memory", params={"from": 1, "to": 2})
    assert r.status_code == 409 and "not running" in r.json()["detail"]


@pytest.fixture(scope="module", autouse=True)
def _no_leftover_dumps(pod: podsim.SimPod) -> Iterator[None]:
    yield
    with contextlib.suppress(OSError):
        for c in pod.containers:
            if c.alive():
                assert not any(
                    n.startswith("tracecar-heap-")
                    for n in os.listdir(f"/proc/{c.host_pid}/root/tmp")
                )
