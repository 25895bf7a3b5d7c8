"""Uprobes through the agent, in the simulated pod, with the real bpftrace and perf probe.

The app runs in its own mount namespace; its binary exists only on its own /srv,
reached by the agent through /proc/PID/root. The C workload (workload.c) calls
add3(i, -i, 7i) and greet("...", i) N times per batch and nap(2000 us) a few
times; a batch starts when /tmp/go appears in the app's /tmp, so every probe is
attached before the calls it must count.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import podsim
from tests.conftest import need
from tests.probes.support import (
    assert_no_leftovers,
    attach,
    detach,
    events_of,
    our_uprobes,
    tracers_of,
)

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
N = 40
NAPS = 4
GREETING = 'tab\there "quoted" {x;}'
BACKENDS = ["bpftrace", "perf-probe"]


class App:
    def __init__(self, c: podsim.Container) -> None:
        self.c = c
        self.batches = 0

    @property
    def pid(self) -> int:
        return self.c.pid

    def batch(self) -> None:
        """Run one batch of calls and wait until it is done."""
        self.batches += 1
        root = Path(f"/proc/{self.c.host_pid}/root")
        (root / "tmp/go").write_text("go")
        done = root / f"tmp/done-{self.batches}"
        deadline = time.monotonic() + 30
        while not done.exists():
            assert time.monotonic() < deadline, "workload batch did not finish"
            time.sleep(0.01)


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("gcc", "bpftrace", "perf")
    out = tmp_path_factory.mktemp("probes") / "workload"
    subprocess.run(["gcc", "-O2", "-o", str(out), str(HERE / "workload.c")], check=True)
    return out


@pytest.fixture(scope="module")
def app(pod: podsim.SimPod, workload: Path) -> App:
    return App(pod.run("app", ["/srv/workload", str(N), str(NAPS)], files={"workload": workload}))


@pytest.fixture
def client(agent: podsim.AgentHandle) -> Iterator[httpx.Client]:
    with agent.client() as c:
        yield c
    assert_no_leftovers(agent)


# --- symbols and bad input ---------------------------------------------------


def test_symbols_of_a_binary_seen_only_through_proc_root(client: httpx.Client, app: App) -> None:
    r = client.get(f"/processes/{app.pid}/symbols", params={"match": "^(add3|greet|malloc)$"})
    assert r.status_code == 200, r.text
    body = r.json()
    found = {(s["name"], s["library"]) for s in body["symbols"]}
    assert ("add3", "/srv/workload") in found
    assert ("greet", "/srv/workload") in found
    assert any(name == "malloc" and "libc" in lib for name, lib in found)
    assert body["objects"][0] == "/srv/workload"
    assert client.get(f"/processes/{app.pid}/symbols", params={"match": "("}).status_code == 422


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"function": 'add3"; system("id'}, 422, "function"),
        ({"function": "add3 { exit(); }"}, 422, "function"),
        ({"function": "add3\nBEGIN"}, 422, "function"),
        ({"function": "add3", "binary": "/srv/../../etc/passwd"}, 422, "binary"),
        ({"function": "add3", "binary": "/srv/work load"}, 422, "binary"),
        ({"function": "add3", "binary": "/srv/notes.txt"}, 422, "ELF"),
        ({"function": "add4"}, 404, "add3"),
        ({"function": "malloc", "binary": "libnope"}, 404, "libnope"),
        ({"function": "add3", "duration_s": 1e9}, 422, "duration_s"),
        ({"function": "add3", "mode": "histogram", "of": "arg9"}, 422, "of"),
        ({"function": "add3", "args": ["int", "float"]}, 422, "args"),
        ({"function": "add3", "surprise": 1}, 422, "surprise"),
        ({"program": "BEGIN { exit(); }"}, 403, "ALLOW_RAW_BPFTRACE"),
    ],
)
def test_bad_requests_say_which_field_and_why(
    client: httpx.Client,
    app: App,
    pod: podsim.SimPod,
    body: dict[str, Any],
    status: int,
    words: str,
) -> None:
    notes = Path(f"/proc/{app.c.host_pid}/root/srv/notes.txt")
    if not notes.exists():
        notes.write_text("not an ELF file\n")
    r = client.post("/probes", json={"pid": app.pid, **body})
    assert r.status_code == status, r.text
    assert words in r.text, r.text
    assert "detail" in r.json()


def test_unknown_pid_and_probe(client: httpx.Client) -> None:
    assert client.post("/probes", json={"pid": 999999, "function": "x"}).status_code == 404
    assert client.get("/probes/0badc0de").status_code == 404
    assert client.get("/probes/../../etc").status_code == 404


def test_dry_run_shows_the_program_and_attaches_nothing(
    client: httpx.Client, app: App, agent: podsim.AgentHandle
) -> None:
    body = {"pid": app.pid, "function": "add3", "args": ["int"], "retval": True}
    r = client.post("/probes?dry_run=true", json=body)
    assert r.status_code == 200, r.text
    plan = r.json()
    assert plan["backend"] == "bpftrace"
    assert f"uprobe:/proc/{app.pid}/root/srv/workload:add3" in plan["plan"]["program"]
    r = client.post("/probes?dry_run=true", json={**body, "backend": "perf-probe"})
    cmds = r.json()["plan"]["commands"]
    assert cmds[0][:4] == ["perf", "probe", "-q", f"--target-ns={app.pid}"]
    assert not tracers_of(agent)


def test_container_and_process_name_target(client: httpx.Client, app: App) -> None:
    body = {"container": "app", "process": "workload", "function": "add3"}
    r = client.post("/probes?dry_run=true", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["target"]["pid"] == app.pid
    r = client.post("/probes?dry_run=true", json={**body, "process": "nosuch"})
    assert r.status_code == 404, r.text


# --- exact captures, both backends ---------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_args_and_retval_exact(client: httpx.Client, app: App, backend: str) -> None:
    probe = attach(
        client,
        {
            "pid": app.pid,
            "function": "add3",
            "args": ["int", "int", "int"],
            "retval": True,
            "backend": backend,
            "duration_s": 60,
        },
    )
    assert probe["backend"] == backend
    app.batch()
    state = detach(client, probe["id"])
    assert state["hits"] == N
    events = events_of(client, probe["id"])
    assert len(events) == N
    got = sorted((e["arg0"], e["arg1"], e["arg2"], e["retval"]) for e in events)
    assert got == [(i, -i, 7 * i, 100 * i - 10 * i + 7 * i) for i in range(N)]
    assert all(e["pid"] == app.pid and e["latency_ns"] > 0 for e in events)
    assert all(abs(e["time_ns"] / 1e9 - time.time()) < 120 for e in events)


@pytest.mark.parametrize("backend", BACKENDS)
def test_string_argument_read_exactly(client: httpx.Client, app: App, backend: str) -> None:
    probe = attach(
        client,
        {"pid": app.pid, "function": "greet", "args": ["str", "int"], "backend": backend},
    )
    app.batch()
    detach(client, probe["id"])
    events = events_of(client, probe["id"])
    assert len(events) == N
    assert {e["arg0"] for e in events} == {GREETING}
    assert sorted(e["arg1"] for e in events) == list(range(N))


@pytest.mark.parametrize("backend", BACKENDS)
def test_count_is_exact(client: httpx.Client, app: App, backend: str) -> None:
    probe = attach(
        client, {"pid": app.pid, "function": "add3", "mode": "count", "backend": backend}
    )
    app.batch()
    app.batch()
    state = detach(client, probe["id"])
    assert state["hits"] == 2 * N
    assert state["summary"]["per_pid"] == {str(app.pid): 2 * N}


@pytest.mark.parametrize("backend", BACKENDS)
def test_latency_histogram(client: httpx.Client, app: App, backend: str) -> None:
    probe = attach(
        client,
        {"pid": app.pid, "function": "nap", "mode": "histogram", "backend": backend},
    )
    app.batch()
    state = detach(client, probe["id"])
    buckets = state["summary"]["histogram"]
    assert sum(b["count"] for b in buckets) == NAPS == state["hits"]
    # usleep(2000): at least 2 ms, and well under a second even on a busy machine.
    for b in buckets:
        if b["count"]:
            assert b["max"] >= 2_000_000 and b["min"] < 1_000_000_000, buckets


def test_histogram_of_an_argument(client: httpx.Client, app: App) -> None:
    probe = attach(
        client,
        {"pid": app.pid, "function": "add3", "mode": "histogram", "of": "arg2", "args": ["int"]},
    )
    app.batch()
    state = detach(client, probe["id"])
    buckets = state["summary"]["histogram"]
    assert sum(b["count"] for b in buckets) == N
    assert max(b["max"] for b in buckets if b["count"]) >= 7 * (N - 1)


def test_user_stack(client: httpx.Client, app: App) -> None:
    probe = attach(client, {"pid": app.pid, "function": "add3", "stack": True, "max_events": 3})
    app.batch()
    events = events_of(client, probe["id"])
    assert len(events) == 3
    assert any("add3" in frame for frame in events[0]["stack"]), events[0]


def test_malloc_in_libc_of_a_python_app(
    client: httpx.Client, pod: podsim.SimPod, agent: podsim.AgentHandle
) -> None:
    code = (
        "import os, time\n"
        "open('/tmp/ready', 'w').close()\n"
        "while not os.path.exists('/tmp/go'): time.sleep(0.01)\n"
        "data = [bytearray(100000) for _ in range(200)]\n"
        "open('/tmp/done', 'w').close()\n"
        "time.sleep(600)\n"
    )
    py = pod.run("pyapp", ["python3", "/srv/app.py"], files={"app.py": code})
    root = Path(f"/proc/{py.host_pid}/root")
    try:
        deadline = time.monotonic() + 20
        while not (root / "tmp/ready").exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        probe = attach(
            client,
            {"pid": py.pid, "binary": "libc", "function": "malloc", "mode": "count", "args": []},
        )
        assert "libc" in probe["target"]["binary"]
        (root / "tmp/go").write_text("")
        deadline = time.monotonic() + 20
        while not (root / "tmp/done").exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        state = detach(client, probe["id"])
        assert state["hits"] >= 200, state
    finally:
        py.stop(signal.SIGKILL)


# --- streaming and the ways a probe ends -------------------------------------------


def _read_stream(
    agent: podsim.AgentHandle, probe_id: str, accept: str, out: list[str], ready: threading.Event
) -> None:
    with (
        agent.client() as c,
        c.stream("GET", f"/probes/{probe_id}/events", headers={"Accept": accept}) as r,
    ):
        assert r.status_code == 200
        ready.set()
        for line in r.iter_lines():
            out.append(line)


@pytest.mark.parametrize("accept", ["application/x-ndjson", "text/event-stream"])
def test_streaming_live(
    client: httpx.Client, app: App, agent: podsim.AgentHandle, accept: str
) -> None:
    probe = attach(client, {"pid": app.pid, "function": "add3", "args": ["int"]})
    lines: list[str] = []
    ready = threading.Event()
    reader = threading.Thread(target=_read_stream, args=(agent, probe["id"], accept, lines, ready))
    reader.start()
    assert ready.wait(10)
    app.batch()
    deadline = time.monotonic() + 10
    while sum('"arg0"' in ln for ln in lines) < N:
        assert time.monotonic() < deadline, lines[-5:]
        time.sleep(0.02)
    detach(client, probe["id"])
    reader.join(10)
    assert not reader.is_alive()
    if accept == "text/event-stream":
        data = [json.loads(ln[5:]) for ln in lines if ln.startswith("data:")]
        kinds = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("event:")]
        assert kinds.count("hit") == N and kinds[-1] == "end"
        assert sorted(d["arg0"] for d in data if "arg0" in d) == list(range(N))
    else:
        records = [json.loads(ln) for ln in lines if ln]
        assert [r["arg0"] for r in records if r["type"] == "hit"] == list(range(N))
        assert records[-1]["type"] == "end" and records[-1]["reason"] == "deleted"


def test_client_disconnect_leaves_the_probe_running_and_nothing_leaks(
    client: httpx.Client, app: App, agent: podsim.AgentHandle
) -> None:
    probe = attach(client, {"pid": app.pid, "function": "add3", "duration_s": 30})
    with agent.client() as c, c.stream("GET", f"/probes/{probe['id']}/events") as r:
        assert r.status_code == 200
        app.batch()
        next(r.iter_lines())
    deadline = time.monotonic() + 10
    while client.get(f"/probes/{probe['id']}").json()["readers"]:
        assert time.monotonic() < deadline, "reader not released after disconnect"
        time.sleep(0.05)
    assert client.get(f"/probes/{probe['id']}").json()["state"] == "running"
    detach(client, probe["id"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_ends_by_duration_and_stays_readable(
    client: httpx.Client, app: App, agent: podsim.AgentHandle, backend: str
) -> None:
    probe = attach(
        client,
        {
            "pid": app.pid,
            "function": "add3",
            "mode": "count",
            "duration_s": 1.5,
            "backend": backend,
        },
    )
    app.batch()
    deadline = time.monotonic() + 15
    while (state := client.get(f"/probes/{probe['id']}").json())["state"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert state["state"] == "finished" and state["reason"] == "duration", state
    assert state["hits"] == N
    assert_no_leftovers(agent)
    assert any(p["id"] == probe["id"] for p in client.get("/probes").json()["probes"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_ends_by_event_cap(
    client: httpx.Client, app: App, agent: podsim.AgentHandle, backend: str
) -> None:
    probe = attach(
        client,
        {"pid": app.pid, "function": "add3", "args": ["int"], "max_events": 5, "backend": backend},
    )
    app.batch()
    deadline = time.monotonic() + 15
    while (state := client.get(f"/probes/{probe['id']}").json())["state"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert state["reason"] == "max_events", state
    assert len(events_of(client, probe["id"])) == 5
    assert_no_leftovers(agent)


def test_probe_limit_is_429(client: httpx.Client, app: App) -> None:
    r = client.get("/probes")
    assert r.status_code == 200
    # The default limit is 8: fill it with cheap probes, then one more is refused.
    ids = []
    try:
        for _ in range(8):
            ids.append(attach(client, {"pid": app.pid, "function": "nap", "mode": "count"})["id"])
        r = client.post("/probes", json={"pid": app.pid, "function": "nap", "mode": "count"})
        assert r.status_code == 429, r.text
    finally:
        for i in ids:
            detach(client, i)


def test_agent_sigterm_and_crash_restart_leave_nothing(pod: podsim.SimPod, app: App) -> None:
    env = {"TRACECAR_AGENT_INSTANCE_ID": "crashtest", "TRACECAR_AGENT_ALLOW_RAW_BPFTRACE": "true"}
    group = "tracecar_crashtest"
    for how in (signal.SIGTERM, signal.SIGKILL):
        a = podsim.start_agent(pod, env=env)
        with a.client() as c:
            attach(c, {"pid": app.pid, "function": "add3", "backend": "bpftrace"})
            attach(c, {"pid": app.pid, "function": "add3", "backend": "perf-probe"})
        assert our_uprobes(group)
        a.container.stop(how, timeout=20)
        # bpftrace dies with the agent either way (PDEATHSIG); perf probe events are
        # deleted on SIGTERM, and survive a crash until the next agent sweeps them.
        deadline = time.monotonic() + 10
        pattern = f"^bpftrace -f json -p {app.pid} "
        while subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        if how == signal.SIGTERM:
            assert not our_uprobes(group)
    assert our_uprobes(group), "a crashed agent leaves its perf probe events"
    a = podsim.start_agent(pod, env=env)
    with a.client() as c:
        assert c.get("/probes").status_code == 200
        deadline = time.monotonic() + 30
        while our_uprobes(group):
            assert time.monotonic() < deadline, our_uprobes(group)
            time.sleep(0.1)
        # This agent's operator allowed raw programs (root-equivalent): they run as given.
        raw = f'uprobe:/proc/{app.pid}/root/srv/workload:add3 {{ printf("raw %d\\n", arg0); }}'
        probe = attach(c, {"pid": app.pid, "program": raw})
        app.batch()
        detach(c, probe["id"])
        outputs = [e["output"] for e in events_of(c, probe["id"])]
        assert sorted(outputs) == sorted(f"raw {i}" for i in range(N))
    a.container.stop(signal.SIGTERM)


def _second_instruction(binary: Path, function: str) -> int:
    """Offset of the second instruction of ``function`` (a probe point inside it)."""
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(binary)], capture_output=True, text=True
    ).stdout
    body = out.split(f"<{function}>:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    addrs = [int(line.split(":", 1)[0], 16) for line in body if ":" in line]
    return addrs[1] - addrs[0]


def test_probe_inside_a_function_goes_to_perf_probe(
    client: httpx.Client, app: App, workload: Path
) -> None:
    off = _second_instruction(workload, "add3")
    body = {"pid": app.pid, "function": f"add3+{off:#x}", "mode": "count"}
    probe = attach(client, body)
    assert probe["backend"] == "perf-probe", probe
    assert "inside a function" in probe["backend_reason"]
    app.batch()
    done = detach(client, probe["id"])
    # Seen once at N + 1 under an overload (two stages and `yes` x2 on 2 cores): the whole
    # answer shows the tracer's own loss count (lost_by_tracer) beside the hits.
    assert done["hits"] == N, done
    r = client.post("/probes", json={**body, "backend": "bpftrace"})
    assert r.status_code == 422 and "perf-probe" in r.text, r.text


def test_histogram_of_an_untyped_argument_through_perf_probe(
    client: httpx.Client, app: App
) -> None:
    probe = attach(
        client,
        {
            "pid": app.pid,
            "function": "add3",
            "mode": "histogram",
            "of": "arg2",
            "backend": "perf-probe",
        },
    )
    app.batch()
    buckets = detach(client, probe["id"])["summary"]["histogram"]
    assert sum(b["count"] for b in buckets) == N
    assert max(b["max"] for b in buckets) >= 7 * (N - 1)
