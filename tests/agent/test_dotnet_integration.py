""".NET on a real CoreCLR (3.1.23), through the agent in the simulated pod.

The runtime comes from PyPI's dotnetcore2 wheel and the C# workloads are compiled
with Debian's mcs (tests/dotnet_workloads.py). The runtime, the app and its files
live in the app container only (its perf map in its own /tmp): the agent reaches
them through /proc/PID/root, as in a pod.
"""

from __future__ import annotations

import json
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import dotnet_workloads as dn
from tests import podsim
from tests.agent.support import folded_total, half_written, pod_processes
from tests.agent.workloads import HOTCOLD_C, compile_c
from tests.conftest import need

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dotnet() -> str:
    need("mcs")
    return str(dn.ensure_runtime())


@pytest.fixture(autouse=True)
def nothing_left_behind(pod: podsim.SimPod, agent: podsim.AgentHandle) -> Iterator[None]:
    yield
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and pod_processes(pod, "perf"):
        time.sleep(0.1)
    assert pod_processes(pod, "perf") == [], "a perf process was left running"
    assert half_written(agent.data_dir) == [], "half-written artifacts left behind"


def run_dotnet(
    pod: podsim.SimPod,
    dotnet: str,
    name: str,
    source: str,
    *,
    env: dict[str, str] | None = None,
    refs: tuple[str, ...] = dn.DEFAULT_REFS,
) -> podsim.Container:
    built = dn.build(source, name=name, refs=refs)
    app = pod.run(name, [dotnet, f"/srv/app/{name}.dll"], files=dn.app_files(built), env=env)
    deadline = time.monotonic() + 30
    while "ready" not in app.log():
        assert app.alive(), app.log()
        assert time.monotonic() < deadline, f"{name} never said ready: {app.log()}"
        time.sleep(0.1)
    return app


def wait_for_method(app: podsim.Container, method: str) -> None:
    """Until the JIT has written ``method`` into the app's perf map (its own /tmp)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if method.encode() in app.read(f"/tmp/perf-{app.pid}.map"):
                return
        except FileNotFoundError:
            pass
        assert time.monotonic() < deadline, f"{method} never reached the perf map"
        time.sleep(0.1)


def test_managed_flame_graph_with_callers(
    pod: podsim.SimPod, client: httpx.Client, dotnet: str
) -> None:
    # COMPlus_ is the spelling 3.1 reads (DOTNET_ came with .NET 5): the webhook sets both.
    app = run_dotnet(pod, dotnet, "chain", dn.CHAIN_CS, env={"COMPlus_PerfMapEnabled": "1"})
    try:
        wait_for_method(app, "Chain::Hot")
        procs = {p["pid"]: p for p in client.get("/processes").json()}
        me = procs[app.pid]
        assert me["runtime"] == "dotnet" and me["runtime_version"] == dn.VERSION, me
        assert me["perf_map"] is True
        r = client.post(
            "/profiles",
            params={"wait": "true", "format": "folded"},
            json={"pid": app.pid, "duration_s": 3},
        )
        assert r.status_code == 200, (r.text, client.get(f"/profiles/{r.json().get('id')}").text)
        stacks = folded_total(r.text)
        total = sum(stacks.values())
        under_hot = {s: n for s, n in stacks.items() if "TraceCar.Demo.Chain::Hot" in s}
        hot = sum(under_hot.values())
        assert total >= 50 and hot / total >= 0.8, sorted(stacks.items(), key=lambda kv: -kv[1])[:8]
        # The callers, in order, root first: Main -> Outer -> Middle -> Hot.
        chained = 0
        for stack, n in under_hot.items():
            names = [
                f.rsplit("::", 1)[-1] for f in stack.split(";") if "TraceCar.Demo.Chain::" in f
            ]
            if names[-4:] == ["Main", "Outer", "Middle", "Hot"]:
                chained += n
        assert chained / hot >= 0.9, sorted(under_hot.items(), key=lambda kv: -kv[1])[:5]
        job_id = r.headers["location"].rsplit("/", 1)[1]
        meta = client.get(f"/profiles/{job_id}").json()["metadata"]
        assert f"/tmp/perf-{app.pid}.map" in meta["unresolved"]["perf_maps_used"]
        svg = client.get(f"/profiles/{job_id}/flamegraph.svg").text
        assert "TraceCar.Demo.Chain::Middle" in svg
    finally:
        app.stop()


def test_no_perf_map_note_names_the_spelling_and_the_restart(
    pod: podsim.SimPod, client: httpx.Client, dotnet: str
) -> None:
    # The .NET 5+ spelling only: a 3.1 runtime ignores it and writes no map.
    app = run_dotnet(pod, dotnet, "chain", dn.CHAIN_CS, env={"DOTNET_PerfMapEnabled": "1"})
    try:
        time.sleep(1)
        me = client.get(f"/processes/{app.pid}").json()
        assert me["runtime"] == "dotnet" and me["perf_map"] is False, me
        r = client.post(
            "/profiles",
            params={"wait": "true", "format": "folded"},
            json={"pid": app.pid, "duration_s": 1},
        )
        assert r.status_code == 200, r.text
        job_id = r.headers["location"].rsplit("/", 1)[1]
        reasons = client.get(f"/profiles/{job_id}").json()["metadata"]["unresolved"]["reasons"]
        note = next(x for x in reasons if "no perf map" in x)
        assert "COMPlus_PerfMapEnabled=1" in note and "restart" in note, note
        assert "DOTNET_PerfMapEnabled=1, a spelling .NET 3.1.23 does not read" in note, note
        assert not any("TraceCar.Demo" in s for s in folded_total(r.text))
    finally:
        app.stop()


@pytest.fixture(scope="module")
def busy(pod: podsim.SimPod, dotnet: str) -> Iterator[podsim.Container]:
    """A .NET app that allocates and throws all the time (shared by the tests below)."""
    app = run_dotnet(pod, dotnet, "busy", dn.BUSY_CS, refs=dn.BUSY_REFS)
    try:
        yield app
    finally:
        app.stop()


def test_trace_saved_as_nettrace_and_summarized(
    busy: podsim.Container, client: httpx.Client
) -> None:
    r = client.post(
        f"/dotnet/{busy.pid}/traces",
        params={"wait": "true"},
        json={"duration_s": 1.5, "preset": "gc", "providers": [
            {"name": "Microsoft-Windows-DotNETRuntime", "keywords": "exception", "level": 4}
        ]},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["state"] == "succeeded", view
    assert view["result"]["providers"] == [
        {"name": "Microsoft-Windows-DotNETRuntime", "keywords": "0x8001", "level": 5, "filter": ""}
    ]
    raw = client.get(view["links"]["nettrace"])
    assert raw.status_code == 200 and raw.content.startswith(
        b"Nettrace\x14\0\0\0!FastSerialization.1"
    )
    assert len(raw.content) == view["result"]["bytes"]
    summary = client.get(view["links"]["summary"]).json()
    assert summary["complete"] and summary["pid"] == busy.pid
    names = {e["event"]: e["count"] for e in summary["by_event"]}
    assert names["GCStart_V2"] > 0 and names["GCEnd_V1"] > 0, names
    assert names["ExceptionThrown_V1"] > 0 and names["GCAllocationTick_V3"] > 0, names
    assert client.get("/dotnet/traces").json()[-1]["id"] == view["id"]
    assert client.delete(view["links"]["self"]).status_code == 204
    assert client.get(view["links"]["self"]).status_code == 404


def test_counters_parsed_from_the_stream(busy: podsim.Container, client: httpx.Client) -> None:
    r = client.get(f"/dotnet/{busy.pid}/counters", params={"duration_s": 2.5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["runtime_version"] == dn.VERSION and body["interval_s"] == 1
    c = body["counters"]
    for name in ("cpu-usage", "gc-heap-size", "gen-0-gc-count", "gen-1-gc-count",
                 "gen-2-gc-count", "exception-count", "threadpool-queue-length"):  # fmt: skip
        assert name in c, sorted(c)
    # the app throws and collects all the time (an interval may end right as one starts)
    assert c["exception-count"]["type"] == "Sum" and max(c["exception-count"]["samples"]) > 0
    assert max(c["gen-0-gc-count"]["samples"]) > 0 and c["gc-heap-size"]["units"] == "MB"
    assert c["cpu-usage"]["samples"], c["cpu-usage"]


def test_diagnostics_errors(
    pod: podsim.SimPod,
    agent: podsim.AgentHandle,
    busy: podsim.Container,
    client: httpx.Client,
    dotnet: str,
) -> None:
    # a pid that is not .NET: 409 naming its runtime
    r = client.get(f"/dotnet/{agent.container.pid}/counters", params={"duration_s": 1})
    assert r.status_code == 409 and "its runtime is python" in r.json()["detail"], r.text
    assert client.get("/dotnet/4000000/counters").status_code == 404
    # unknown providers: 422 listing the presets
    r = client.post(f"/dotnet/{busy.pid}/traces", json={"providers": [{"name": "Nope-Provider"}]})
    assert r.status_code == 422 and "cpu-sampling, gc, exceptions" in r.json()["detail"], r.text
    r = client.post(f"/dotnet/{busy.pid}/traces", json={"preset": "allocations"})
    assert r.status_code == 422 and "cpu-sampling" in r.text
    # what 3.1 does not answer: 409 naming the minimum version
    r = client.get(f"/dotnet/{busy.pid}/process-info")
    assert r.status_code == 409, r.text
    assert (
        r.json()["minimum_version"] == "5.0" and "ProcessInfo needs .NET 5.0" in r.json()["detail"]
    )
    # CollectTracing2 (rundown off) is documented for .NET 5, and 3.1.23 answers it
    r = client.post(
        f"/dotnet/{busy.pid}/traces",
        params={"wait": "true"},
        json={"preset": "exceptions", "rundown": False, "duration_s": 0.5},
    )
    assert r.status_code == 200 and r.json()["state"] == "succeeded", r.text
    summary = client.get(r.json()["links"]["summary"]).json()
    providers = {e["provider"] for e in summary["by_event"]}
    assert "Microsoft-Windows-DotNETRuntimeRundown" not in providers, summary
    # diagnostics off: no socket at all
    off = run_dotnet(pod, dotnet, "chain", dn.CHAIN_CS, env={"COMPlus_EnableDiagnostics": "0"})
    try:
        r = client.get(f"/dotnet/{off.pid}/counters", params={"duration_s": 1})
        assert r.status_code == 409 and "no diagnostics socket" in r.json()["detail"], r.text
    finally:
        off.stop()
    # a socket file left with nothing listening (what a crashed runtime leaves)
    import socket as so

    app = run_dotnet(pod, dotnet, "chain", dn.CHAIN_CS)
    try:
        stale = f"/proc/{app.host_pid}/root/tmp/dotnet-diagnostic-{app.pid}-99999999-socket"
        s = so.socket(so.AF_UNIX)
        s.bind(stale)
        s.close()  # bound, never listening: connect() is refused
        r = client.get(f"/dotnet/{app.pid}/counters", params={"duration_s": 1})
        assert r.status_code == 409 and "socket is gone" in r.json()["detail"], r.text
    finally:
        app.stop()


def elf_core_notes(data: bytes) -> dict[int, int]:
    """The note types of an ELF core file (x86-64), with how many of each."""
    assert data[:4] == b"\x7fELF" and data[4] == 2, "not a 64-bit ELF file"
    e_type = struct.unpack_from("<H", data, 16)[0]
    assert e_type == 4, f"ELF type {e_type}, not a core file (4)"
    (phoff,) = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    notes: dict[int, int] = {}
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize
        )
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
            pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
            notes[ntype] = notes.get(ntype, 0) + 1
    return notes


NT_PRSTATUS, NT_PRPSINFO, NT_AUXV, NT_FILE = 1, 3, 6, 0x46494C45


def test_dotnet_dump_with_createdump(busy: podsim.Container, client: httpx.Client) -> None:
    r = client.post(f"/processes/{busy.pid}/dump", params={"wait": "true"}, json={"type": "mini"})
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["state"] == "succeeded", view
    assert view["writer"] == f"createdump of .NET {dn.VERSION}" and view["type"] == "mini"
    # createdump came from the target's own shared framework, through /proc/PID/root
    assert view["result"]["argv"][0].startswith(f"/proc/{busy.pid}/root/")
    core = client.get(view["links"]["core"])
    assert core.status_code == 200 and len(core.content) == view["result"]["bytes"]
    notes = elf_core_notes(core.content)
    threads = client.get(f"/processes/{busy.pid}").json()["threads"]
    assert notes.get(NT_PRSTATUS, 0) >= min(threads, 2) and NT_AUXV in notes, notes
    assert view["result"]["bytes"] <= view["result"]["estimate"]["bytes"] * 1.5
    assert busy.alive()
    assert client.delete(view["links"]["self"]).status_code == 204
    # the default type, heap: what dotnet-dump analyze needs, bigger than mini
    r = client.post(f"/processes/{busy.pid}/dump", params={"wait": "true"})
    heap = r.json()
    assert r.status_code == 200 and heap["state"] == "succeeded" and heap["type"] == "heap", r.text
    assert heap["result"]["bytes"] > view["result"]["bytes"]
    with client.stream("GET", heap["links"]["core"]) as core_stream:
        head = next(core_stream.iter_bytes(64))
    assert head[:4] == b"\x7fELF" and head[16] == 4  # ET_CORE
    assert client.delete(heap["links"]["self"]).status_code == 204
    # a native-only type for a .NET process's counterpart: mini/heap are .NET's
    r = client.post(f"/processes/{busy.pid}/dump", json={"type": "huge"})
    assert r.status_code == 422 and "mini" in r.text


def test_native_dump_with_gcore_opens_in_gdb(
    pod: podsim.SimPod, client: httpx.Client, tmp_path: Path
) -> None:
    need("gcc", "gdb")
    exe = compile_c(HOTCOLD_C, tmp_path / "hotcold")
    app = pod.run("native", ["/srv/hotcold"], files={"hotcold": exe})
    try:
        r = client.post(f"/processes/{app.pid}/dump", json={"type": "heap"})
        assert r.status_code == 422 and "use type full" in r.json()["detail"], r.text
        r = client.post(f"/processes/{app.pid}/dump", params={"wait": "true"})
        assert r.status_code == 200 and r.json()["state"] == "succeeded", r.text
        view = r.json()
        assert view["writer"] == "gdb gcore" and view["type"] == "full"
        core = tmp_path / "core"
        core.write_bytes(client.get(view["links"]["core"]).content)
        bt = subprocess.run(
            ["gdb", "-nx", "-batch", "-ex", "bt", str(exe), str(core)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "main" in bt.stdout and (
            "hot_function" in bt.stdout or "cold_function" in bt.stdout
        ), bt.stdout
        time.sleep(0.3)
        assert app.alive() and Path(f"/proc/{app.host_pid}/stat").read_text().split()[2] != "T"
    finally:
        app.stop()


def test_dump_larger_than_the_free_space_is_refused_before_writing(
    pod: podsim.SimPod, dotnet: str, busy: podsim.Container
) -> None:
    """An agent whose data volume is a 96 MiB tmpfs: a full dump of a .NET process
    (hundreds of MiB of readable memory) does not fit, and nothing is written."""
    small = pod.workdir / "small-volume"  # not under /tmp: each container has its own
    small.mkdir()
    # mounted in the pod's mount namespace: the agent's container starts from a copy of it
    in_pod = ["nsenter", "-t", str(pod.infra_pid), "--mount", "--"]
    mount = [*in_pod, "mount", "-t", "tmpfs", "-o", "size=96m", "tracecar-small", str(small)]
    subprocess.run(mount, check=True, timeout=30)
    try:
        agent2 = podsim.start_agent(pod, env={"TRACECAR_AGENT_DATA_DIR": str(small / "data")})
        try:
            with agent2.client() as c:
                r = c.post(f"/processes/{busy.pid}/dump", json={"type": "full"})
                assert r.status_code == 409, r.text
                body = r.json()
                assert (
                    "nothing was written" in body["detail"] and body["estimate"]["bytes"] > 96 << 20
                )
                assert c.get("/dumps").json() == []
            left = f"/proc/{agent2.container.host_pid}/root{small}/data"
            assert not list(Path(left).rglob("core*"))
        finally:
            agent2.container.stop()
    finally:
        subprocess.run([*in_pod, "umount", "-l", str(small)], check=False, timeout=30)


def test_runtime_events_through_lttng_and_the_provider_report(
    pod: podsim.SimPod, agent: podsim.AgentHandle, client: httpx.Client, dotnet: str
) -> None:
    """Exceptions counted by the runtime's own tracepoints (DotNETRuntime:*), within 5%
    of what the app reports; /capabilities tells a process whose provider loaded from one
    whose provider did not (no LTTng-UST 2.12 in its image)."""
    libs = dn.ensure_lttng_ust_212()
    n = 2000
    # Started after the agent (its session daemon is up: the app registers at start).
    app = pod.run(
        "events",
        [dotnet, "/srv/app/busy.dll", str(n)],
        files=dn.app_files(dn.build(dn.BUSY_CS, name="busy", refs=dn.BUSY_REFS)),
        env={"COMPlus_EnableEventLog": "1", "LD_LIBRARY_PATH": str(libs),
             "LTTNG_HOME": "/run/lttng", "LTTNG_UST_REGISTER_TIMEOUT": "3000"},
    )  # fmt: skip
    bare = run_dotnet(pod, dotnet, "chain", dn.CHAIN_CS, env={"COMPlus_EnableEventLog": "1"})
    try:
        deadline = time.monotonic() + 30
        while "ready" not in app.log():
            assert app.alive() and time.monotonic() < deadline, app.log()
            time.sleep(0.1)
        caps = {p["pid"]: p for p in client.get("/capabilities").json()["dotnet"]["processes"]}
        assert caps[app.pid]["lttng_provider"] is True and caps[app.pid]["event_log"], caps
        assert caps[bare.pid]["lttng_provider"] is False
        assert "liblttng-ust.so.0" in caps[bare.pid]["lttng_reason"], caps[bare.pid]
        r = client.post(
            "/lttng/sessions",
            json={"preset": "dotnet", "pids": [app.pid], "start": True, "subbuf_size": 1 << 20,
                  "num_subbuf": 8},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        Path(f"/proc/{app.host_pid}/root/tmp/go").write_text("")
        deadline = time.monotonic() + 60
        thrown_file = Path(f"/proc/{app.host_pid}/root/tmp/thrown")
        while not thrown_file.exists() or not thrown_file.read_text():
            assert app.alive() and time.monotonic() < deadline, app.log()
            time.sleep(0.2)
        reported = int(thrown_file.read_text())
        assert reported == n
        time.sleep(1)
        r = client.post(f"/lttng/sessions/{sid}/stop")
        assert r.status_code == 200, r.text
        counts: dict[str, int] = {}
        fields: dict[str, object] = {}
        with client.stream(
            "GET", f"/lttng/sessions/{sid}/events", params={"format": "json"}
        ) as events:
            for line in events.iter_lines():
                if not line.strip():
                    continue
                ev = json.loads(line)
                counts[ev["name"]] = counts.get(ev["name"], 0) + 1
                if ev["name"] == "DotNETRuntime:ExceptionThrown_V1" and not fields:
                    fields = ev["fields"]
        thrown = counts.get("DotNETRuntime:ExceptionThrown_V1", 0)
        assert abs(thrown - reported) <= 0.05 * reported, (thrown, reported, counts)
        assert fields["ExceptionType"] == "System.InvalidOperationException", fields
        assert str(fields["ExceptionMessage"]).startswith("counted "), fields
        assert counts.get("DotNETRuntime:GCStart_V2", 0) > 0, counts
        assert client.delete(f"/lttng/sessions/{sid}").status_code == 200
    finally:
        app.stop()
        bare.stop()


def test_stack_snapshot_names_managed_frames(
    pod: podsim.SimPod, client: httpx.Client, dotnet: str
) -> None:
    app = run_dotnet(pod, dotnet, "chain", dn.CHAIN_CS, env={"COMPlus_PerfMapEnabled": "1"})
    try:
        wait_for_method(app, "Chain::Hot")
        r = client.get(f"/processes/{app.pid}/stack")
        assert r.status_code == 200, r.text
        snap = r.json()
        assert snap["runtime"] == "dotnet" and snap["tool"] == "gdb"
        main = next(t for t in snap["threads"] if t["tid"] == app.pid)
        names = [f["function"] for f in main["frames"]]
        managed = [n.split("::")[1].split("(")[0] for n in names if "TraceCar.Demo.Chain::" in n]
        # innermost first; Hot itself unless the snapshot caught the loop in a caller
        assert managed[-3:] == ["Middle", "Outer", "Main"] or managed[-4:] == [
            "Hot", "Middle", "Outer", "Main"
        ], names  # fmt: skip
        assert any(n.startswith("CallDescrWorkerInternal") for n in names), names
        assert any("managed frame(s) named from /tmp/perf-" in n for n in snap["notes"]), snap
        assert any("frame pointers" in n for n in snap["notes"])
        text = client.get(f"/processes/{app.pid}/stack", params={"format": "text"}).text
        assert "TraceCar.Demo.Chain::Outer" in text and "libcoreclr.so" in text
    finally:
        app.stop()


def test_uprobe_on_a_managed_method_says_what_works(
    busy: podsim.Container, client: httpx.Client
) -> None:
    r = client.post("/probes", json={"pid": busy.pid, "function": "TraceCar.Demo.Busy::Allocate"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "anonymous memory" in detail and "preset dotnet" in detail, detail
    assert "libcoreclr.so" in detail and "ReadyToRun" in detail
    r = client.post("/probes", json={"pid": busy.pid, "function": "Allocate"})
    assert r.status_code == 422 and "no native function 'Allocate'" in r.json()["detail"], r.text


def test_uprobe_on_the_runtime_counts_throws(busy: podsim.Container, client: httpx.Client) -> None:
    """What works instead: a uprobe on libcoreclr.so's throw helper counts exceptions."""
    r = client.post(
        "/probes",
        json={"pid": busy.pid, "binary": "libcoreclr.so", "function": "_Z8IL_ThrowP6Object",
              "mode": "count"},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    probe = r.json()
    time.sleep(1.5)
    r = client.delete(f"/probes/{probe['id']}")
    assert r.status_code == 200 and r.json()["hits"] > 0, r.text


def test_cpu_sampling_preset_records_stacks(busy: podsim.Container, client: httpx.Client) -> None:
    r = client.post(
        f"/dotnet/{busy.pid}/traces",
        params={"wait": "true"},
        json={"preset": "cpu-sampling", "duration_s": 1},
    )
    assert r.status_code == 200 and r.json()["state"] == "succeeded", r.text
    summary = client.get(r.json()["links"]["summary"]).json()
    by = {(e["provider"], e["event"]): e["count"] for e in summary["by_event"]}
    samples = sum(n for (p, _), n in by.items() if p == "Microsoft-DotNETCore-SampleProfiler")
    assert samples > 0 and summary["stacks"] > 0, by
    # the rundown names the methods the samples' stacks point into
    assert by[("Microsoft-Windows-DotNETRuntimeRundown", "MethodDCEndVerbose_V1")] > 0


def test_counters_on_metrics_for_processes_that_opt_in(
    pod: podsim.SimPod, client: httpx.Client, dotnet: str, busy: podsim.Container
) -> None:
    app = run_dotnet(pod, dotnet, "chain", dn.CHAIN_CS, env={"TRACECAR_DOTNET_COUNTERS": "1"})

    def series() -> list[str]:
        text = client.get("/metrics").text
        return [ln for ln in text.splitlines() if ln.startswith("tracecar_dotnet_counter{")]

    try:
        mine = f'pid="{app.pid}"'
        deadline = time.monotonic() + 60
        while not any(mine in ln and 'counter="cpu-usage"' in ln for ln in series()):
            assert time.monotonic() < deadline, series()
            time.sleep(1)
        got = series()
        assert any(mine in ln and 'container="chain"' in ln and 'units="%"' in ln for ln in got)
        # the busy app did not opt in: none of its counters
        assert not any(f'pid="{busy.pid}"' in ln for ln in got)
    finally:
        app.stop()
    deadline = time.monotonic() + 60
    while any(mine in ln for ln in series()):
        assert time.monotonic() < deadline, "the series of an exited process stayed"
        time.sleep(1)
