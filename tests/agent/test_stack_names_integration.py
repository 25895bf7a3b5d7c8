"""The same names in every output, through the agent in the simulated pod, with the real
bpftrace, perf, gcc and Go: the issue's frameless-leaf program (``main`` calls the leaf
``checksum`` directly three times as often as through ``verify``) in Go (stripped, names
from .gopclntab only) and in C, in off-CPU profiles, in the flight recorder and in
probe stacks; pprof with Go's file and line.

Off-CPU time of a CPU-bound leaf: each program is pinned with a busy loop to one CPU
(``taskset``), so it is switched out (preempted) about as often as it runs, at the PC
it was running, as a CPU sample would catch it: ``verify;checksum`` then holds about a
quarter of ``checksum``'s time off CPU, as it holds a quarter of its CPU samples.
Without the fix-up (a frame-pointer walk from the frameless leaf) it holds none.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import podsim
from tests.agent.support import (
    AGENT_READY_S,
    folded_total,
    pod_processes,
    profile,
    profile_until,
    share,
    symbols_of,
    until_complete,
    until_recorded,
)
from tests.agent.workloads import LEAF_C, LEAF_GO, build_go_stripped, compile_c
from tests.conftest import need
from tests.probes.support import attach, events_of
from tests.profiling_pure.support import wire_fields

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def agent(pod: podsim.SimPod) -> podsim.AgentHandle:
    return podsim.start_agent(pod, ready_timeout=AGENT_READY_S)


@pytest.fixture
def client(agent: podsim.AgentHandle) -> Iterator[httpx.Client]:
    with agent.client() as c:
        yield c
        c.delete("/recorder")


@pytest.fixture(autouse=True)
def nothing_left_behind(pod: podsim.SimPod) -> Iterator[None]:
    yield
    deadline = time.monotonic() + 15
    tools = ("perf", "bpftrace")
    while time.monotonic() < deadline and any(pod_processes(pod, t) for t in tools):
        time.sleep(0.1)
    for tool in tools:
        assert pod_processes(pod, tool) == [], f"a {tool} process was left running"


@pytest.fixture(scope="module")
def stripped_go(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The leaf program built with ``-ldflags=-s -w``: names from its .gopclntab only."""
    need("go")
    d = tmp_path_factory.mktemp("gostripped")
    return build_go_stripped(LEAF_GO, d / "stripped")


@pytest.fixture(scope="module")
def c_leaf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("gcc")
    return compile_c(LEAF_C, tmp_path_factory.mktemp("cleaf") / "leaf")


def _pinned(pod: podsim.SimPod, name: str, exe: Path) -> tuple[podsim.Container, podsim.Container]:
    """``exe`` and a busy loop sharing CPU 0: the program is preempted where it runs."""
    need("taskset")
    taskset = shutil.which("taskset") or "taskset"
    hog = pod.run(f"{name}-hog", [taskset, "-c", "0", "sh", "-c", "while :; do :; done"])
    app = pod.run(name, [taskset, "-c", "0", f"/srv/{exe.name}"], files={exe.name: exe})
    return app, hog


# Preemptions of the app while it is profiled: each is one off-CPU "sample" at the PC it
# ran. One 3 s profile has 500-2,000 here under a load average of 8; pass 25 (load 10)
# gave the app 4% of a core, and the few long waits it had put the share at 0.06.
ENOUGH_PREEMPTIONS = 300


def _preemptions(host_pid: int) -> int:
    """Involuntary context switches of all of ``host_pid``'s threads so far."""
    total = 0
    for status in Path(f"/proc/{host_pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue  # a thread that ended
        for line in text.splitlines():
            if line.startswith("nonvoluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def _offcpu_until(
    client: httpx.Client, app: podsim.Container, **extra: object
) -> tuple[dict[str, int], Any]:
    """3 s off-CPU profiles of ``app``, added up (``profile_until``) until it was
    preempted ENOUGH_PREEMPTIONS times: the share of a caller is a share of preemptions,
    and a loaded machine may preempt the app only a few dozen times in 3 s."""
    start = _preemptions(app.host_pid)
    body = {"type": "off-cpu", "pid": app.pid, "duration_s": 3, **extra}
    return profile_until(
        client, body, lambda _: _preemptions(app.host_pid) - start >= ENOUGH_PREEMPTIONS
    )


def _top(stacks: dict[str, int], n: int = 5) -> list[tuple[str, int]]:
    return sorted(stacks.items(), key=lambda kv: -kv[1])[:n]


def test_offcpu_stripped_go_names_and_frameless_leaf_caller(
    pod: podsim.SimPod,
    client: httpx.Client,
    stripped_go: Path,
) -> None:
    need("bpftrace")
    stripped = stripped_go
    app, hog = _pinned(pod, "gostripped", stripped)
    try:
        time.sleep(0.5)
        stacks, done = _offcpu_until(client, app)
    finally:
        app.stop()
        hog.stop()
    meta = done["metadata"]
    (choice,) = meta["unwinding"]
    assert choice["call_graph"] == "fp", choice  # Go: bpftrace, frame pointers
    (entry,) = symbols_of(done, "stripped")
    assert entry["source"] == "pclntab", entry
    assert not any("[stripped]" in s for s in stacks), _top(stacks)
    via, of = share(stacks, "main.verify;main.checksum", "main.checksum")
    assert of >= 100_000, _top(stacks)  # microseconds preempted in checksum: >= 0.1 s
    assert 0.1 <= via / of <= 0.45, (via, of, _top(stacks))
    assert any("main.hot;main.mix" in s for s in stacks), _top(stacks)  # inlined: a frame
    assert meta["leaf_callers_recovered"] > 0


def test_offcpu_c_frameless_leaf_caller_both_recorders(
    pod: podsim.SimPod, client: httpx.Client, c_leaf: Path
) -> None:
    need("bpftrace", "perf")
    app, hog = _pinned(pod, "cleafoff", c_leaf)
    try:
        time.sleep(0.5)
        fp, fp_done = _offcpu_until(client, app, call_graph="fp")
        dwarf, dwarf_done = _offcpu_until(client, app, call_graph="dwarf")
    finally:
        app.stop()
        hog.stop()
    # Frame pointers (bpftrace): the caller the leaf hides, put back.
    via, of = share(fp, "verify;checksum", "checksum")
    assert of >= 100_000, _top(fp)
    assert 0.1 <= via / of <= 0.45, (via, of, _top(fp))
    assert fp_done["metadata"]["leaf_callers_recovered"] > 0
    # DWARF (perf): .eh_frame unwinds the leaf itself; the same share.
    via, of = share(dwarf, "verify;checksum", "checksum")
    assert of >= 100_000, _top(dwarf)
    assert 0.1 <= via / of <= 0.45, (via, of, _top(dwarf))
    assert dwarf_done["metadata"]["plan"]["call_graph"] == "dwarf"


def test_recorder_stripped_go_and_c_frameless_leaf_callers(
    pod: podsim.SimPod,
    client: httpx.Client,
    stripped_go: Path,
    c_leaf: Path,
) -> None:
    need("bpftrace")
    stripped = stripped_go
    go = pod.run("recgo", ["/srv/stripped"], files={"stripped": stripped})
    c = pod.run("recc", ["/srv/leaf"], files={"leaf": c_leaf})
    try:
        r = client.post("/recorder", json={"pids": [go.pid, c.pid], "frequency_hz": 99})
        assert r.status_code == 201, r.text
        until_recorded(client)
        t0 = time.time()
        time.sleep(12)  # both busy on a shared, loaded machine: enough samples of each
        t1 = time.time()
        # Until the interval is complete (the ring trails real time by under 2 s).
        until_complete(client, t1, 30)
        params = {"from": t0, "to": t1}
        folded = client.get("/recorder/profile", params={**params, "format": "folded"})
        assert folded.status_code == 200, folded.text
        stacks = folded_total(folded.text)
        pb = client.get("/recorder/profile", params={**params, "format": "pprof"})
        status = client.get("/recorder").json()
    finally:
        go.stop()
        c.stop()
    go_stacks = {s: n for s, n in stacks.items() if s.startswith("stripped;")}
    c_stacks = {s: n for s, n in stacks.items() if s.startswith("leaf;")}
    assert not any("[stripped]" in s for s in go_stacks), _top(go_stacks)
    for name, st, pattern in (
        ("go", go_stacks, "main.verify;main.checksum"),
        ("c", c_stacks, "verify;checksum"),
    ):
        leaf = pattern.rsplit(";", 1)[1]
        via, of = share(st, pattern, leaf)
        assert of >= 30, (name, _top(st))
        assert 0.1 <= via / of <= 0.45, (name, via, of, _top(st))
    assert any("main.hot;main.mix" in s for s in go_stacks), _top(go_stacks)
    assert status["leaf_callers_recovered"] > 0, status
    # The interval's pprof: the stripped Go functions with their file and line.
    sources = _pprof_sources(pb.content)
    file, line = sources["main.checksum"]
    assert file.endswith("/main.go") and line > 0, sources


def _pprof_sources(blob: bytes) -> dict[str, tuple[str, int]]:
    """Function name -> (filename, start_line) of a pprof, read with a schema-less reader."""
    fields = wire_fields(gzip.decompress(blob))
    strings = [v for f, _, v in fields if f == 6]
    out: dict[str, tuple[str, int]] = {}
    for f, _, v in fields:
        if f == 5:
            assert isinstance(v, bytes)
            fn = {k: x for k, _, x in wire_fields(v)}
            name = strings[int(fn[2])]
            filename = strings[int(fn.get(4, 0))]
            assert isinstance(name, bytes) and isinstance(filename, bytes)
            out[name.decode()] = (filename.decode(), int(fn.get(5, 0)))
    return out


def test_probe_stacks_of_stripped_go_are_named(
    pod: podsim.SimPod,
    client: httpx.Client,
    stripped_go: Path,
) -> None:
    need("bpftrace")
    stripped = stripped_go
    app = pod.run("probego", ["/srv/stripped"], files={"stripped": stripped})
    try:
        time.sleep(0.5)
        r = client.get(f"/processes/{app.pid}/symbols", params={"match": "^main.checksum$"})
        assert r.status_code == 200, r.text
        (sym,) = r.json()["symbols"]  # from the pclntab: the binary has no .symtab
        probe = attach(
            client,
            {"pid": app.pid, "function": sym["address"], "stack": True, "max_events": 40},
        )
        deadline = time.monotonic() + 30
        while client.get(f"/probes/{probe['id']}").json()["hits"] < 40:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        events = events_of(client, probe["id"])
    finally:
        app.stop()
    stacks = [e["stack"] for e in events]
    assert stacks and all(s[0] == "main.checksum" for s in stacks), stacks[:3]
    # At the entry of checksum no frame is set up: the caller is put back where the
    # call is direct (verify's; main's own caller, runtime.main, calls it indirectly).
    assert any(s[1:2] == ["main.verify"] for s in stacks), stacks[:5]
    assert not any(f.startswith("0x") or f == "[stripped]" for s in stacks for f in s), stacks[:3]


def test_cpu_profile_pprof_has_go_file_and_line(
    pod: podsim.SimPod,
    client: httpx.Client,
    stripped_go: Path,
    tmp_path: Path,
) -> None:
    stripped = stripped_go
    app = pod.run("pprofgo", ["/srv/stripped"], files={"stripped": stripped})
    try:
        time.sleep(0.5)
        _stacks, meta = profile(client, {"pid": app.pid, "duration_s": 2, "frequency_hz": 99})
        blob = client.get(f"/profiles/{meta['id']}/profile.pb.gz").content
    finally:
        app.stop()
    sources = _pprof_sources(blob)
    file, line = sources["main.checksum"]
    assert file.endswith("/main.go") and line > 0, sources
    go = shutil.which("go")
    if go is not None:  # pprof's own reader agrees
        (tmp_path / "p.pb.gz").write_bytes(blob)
        out = subprocess.run(
            [go, "tool", "pprof", "-raw", str(tmp_path / "p.pb.gz")],
            capture_output=True,
            text=True,
            timeout=600,  # the first run builds the pprof tool (then cached)
            env={**os.environ, "GOTOOLCHAIN": "local"},
        )
        assert out.returncode == 0, out.stderr
        assert f"main.checksum {file}:{line}" in out.stdout, out.stdout[-2000:]
