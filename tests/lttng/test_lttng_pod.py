"""LTTng in the simulated pod: the agent's session daemon, real apps, real traces.

The agent runs lttng-sessiond with its sockets in the pod's shared /run/lttng;
a C app with its own tracepoint provider (built here with liblttng-ust-dev) and
a Python app logging through ``lttngust`` run in their own containers. Every
count and field checked below is what the apps really emitted.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.lttng._read import babeltrace_argv, to_ndjson
from tests import podsim
from tests.conftest import need
from tests.lttng.lttng_helpers import (
    build_c_app,
    build_jul_app,
    daemon_sessions,
    go,
    ndjson,
    pod_processes,
    run_c_app,
    run_jul_app,
    run_py_app,
    trigger,
    wait_for,
)

pytestmark = pytest.mark.integration

N = 200  # ticks per batch; one detail event per 10 ticks


@pytest.fixture(scope="module")
def c_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("gcc", "lttng", "lttng-sessiond", "babeltrace2")
    return build_c_app(tmp_path_factory.mktemp("tcapp"))


@pytest.fixture(scope="module")
def jul_class(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("javac", "java")
    return build_jul_app(tmp_path_factory.mktemp("julapp"))


@pytest.fixture(scope="module")
def early(pod: podsim.SimPod, c_binary: Path, jul_class: Path) -> dict[str, podsim.Container]:
    """Apps started BEFORE the session daemon (registration order matters)."""
    return {
        "c": run_c_app(pod, "early-c", c_binary, N),
        "py": run_py_app(pod, "early-py", 10),
        "jul": run_jul_app(pod, "early-jul", jul_class, 10),
    }


@pytest.fixture(scope="module")
def lt(pod: podsim.SimPod, early: dict[str, podsim.Container]) -> podsim.AgentHandle:
    return podsim.start_agent(pod)


@pytest.fixture(scope="module")
def client(lt: podsim.AgentHandle) -> Iterator[httpx.Client]:
    with lt.client() as c:
        yield c


@pytest.fixture(scope="module")
def capp(pod: podsim.SimPod, lt: podsim.AgentHandle, c_binary: Path) -> podsim.Container:
    return run_c_app(pod, "capp", c_binary, N)


@pytest.fixture(scope="module")
def pyapp(pod: podsim.SimPod, lt: podsim.AgentHandle) -> podsim.Container:
    return run_py_app(pod, "pyapp", 50)


def _rounded(v: object) -> object:
    """babeltrace2's text shows reals with 6 significant digits; the native sink all 17."""
    if isinstance(v, float):
        return float(f"{v:.6g}")
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_rounded(x) for x in v]
    return v


class Batches:
    """Each SIGUSR1 makes an app emit its next batch; count them per app."""

    def __init__(self) -> None:
        self.n: dict[str, int] = {}

    def fire(self, c: podsim.Container) -> int:
        b = self.n.get(c.name, 0) + 1
        self.n[c.name] = b
        trigger(c, b)
        return b


@pytest.fixture(scope="module")
def batches() -> Batches:
    return Batches()


@pytest.fixture(autouse=True)
def _no_session_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests below count the daemon's sessions and the agent's limit: a test that fails
    before its DELETE must not fail the ones after it for a session it left."""
    yield
    if "client" not in request.fixturenames:
        return
    client: httpx.Client = request.getfixturevalue("client")
    with contextlib.suppress(httpx.HTTPError):
        for sess in client.get("/lttng/sessions").json().get("sessions", []):
            client.delete(f"/lttng/sessions/{sess['id']}")


def create(client: httpx.Client, body: dict[str, object]) -> str:
    r = client.post("/lttng/sessions", json=body)
    assert r.status_code == 201, r.text
    sid: str = r.json()["id"]
    return sid


def act(client: httpx.Client, sid: str, action: str) -> dict[str, object]:
    r = client.post(f"/lttng/sessions/{sid}/{action}")
    assert r.status_code == 200, r.text
    out: dict[str, object] = r.json()
    return out


def test_capabilities(client: httpx.Client) -> None:
    caps = client.get("/capabilities").json()["lttng"]
    assert caps["available"] is True, caps
    assert caps["sessiond"]["running"] is True
    assert caps["domains"]["userspace"]["available"] is True
    assert caps["domains"]["python"]["available"] is True
    kernel = caps["domains"]["kernel"]
    assert kernel["available"] is False and "module" in kernel["reason"]
    assert caps["modes"]["live"]["available"] is False
    # The native NDJSON sink is built in the background (gcc + libbabeltrace2-dev).
    wait_for(
        lambda: client.get("/capabilities").json()["lttng"]["json_converter"].startswith("native"),
        60,
        "the native NDJSON sink",
    )


def test_registration_order(
    client: httpx.Client,
    early: dict[str, podsim.Container],
    capp: podsim.Container,
    pyapp: podsim.Container,
) -> None:
    """C apps (liblttng-ust) and the JUL agent register when the daemon appears; Python's
    agent does not."""

    def listed() -> dict[int, set[str]]:
        procs = client.get("/lttng/tracepoints").json()["processes"]
        out: dict[int, set[str]] = {}
        for p in procs:
            out.setdefault(p["pid"], set()).update(e["name"] for e in p["events"])
        return out

    def both() -> dict[int, set[str]] | None:
        s = listed()
        return s if early["c"].pid in s and "tracecar.jul" in s.get(early["jul"].pid, ()) else None

    seen = wait_for(both, 20, "the early C and JUL apps to register")
    assert "tracecar_test:tick" in seen[early["c"].pid]
    assert "tracecar_test:tick" in seen[capp.pid]
    assert "tracecar.py" in seen[pyapp.pid]
    # The Python agent reads the daemon's port file once, at import: an app that
    # started before the daemon never registers (docs/lttng.md: restart it).
    assert early["py"].pid not in seen


def test_c_app_exact_events(
    client: httpx.Client,
    lt: podsim.AgentHandle,
    capp: podsim.Container,
    batches: Batches,
    tmp_path: Path,
) -> None:
    sid = create(
        client,
        {
            "name": "c-exact",
            "events": [{"domain": "userspace", "names": ["tracecar_test:*"]}],
            "contexts": ["vpid", "procname"],
            "pids": [capp.pid],
        },
    )
    r = client.post(f"/lttng/sessions/{sid}/stop")
    assert r.status_code == 409 and "never started" in r.json()["detail"]
    assert client.get(f"/lttng/sessions/{sid}/events").status_code == 409
    act(client, sid, "start")
    assert client.get(f"/lttng/sessions/{sid}/trace").status_code == 409  # active
    batch = batches.fire(capp)
    view = act(client, sid, "stop")
    assert view["state"] == "stopped"
    assert view["events"] == N + N // 10
    assert view["discarded_events"] == 0
    assert isinstance(view["size_bytes"], int) and view["size_bytes"] > 0

    evs = ndjson(client.get(f"/lttng/sessions/{sid}/events", params={"format": "json"}))
    ticks = [e for e in evs if e["name"] == "tracecar_test:tick"]
    details = [e for e in evs if e["name"] == "tracecar_test:detail"]
    assert [t["fields"]["seq"] for t in ticks] == list(range(N))
    assert all(t["fields"]["batch"] == batch for t in ticks)
    assert all(t["fields"]["msg"] == f"tick-{t['fields']['seq']}" for t in ticks)
    assert all(t["context"] == {"vpid": capp.pid, "procname": "tcapp"} for t in ticks)
    assert all(t["loglevel"] == "TRACE_INFO" for t in ticks)
    assert [d["fields"]["seq"] for d in details] == list(range(0, N, 10))
    assert details[1]["fields"]["ratio"] == pytest.approx(10 / N)
    stamps = [e["timestamp_ns"] for e in evs]
    assert stamps == sorted(stamps)

    # Paging by count and by time range.
    page = ndjson(
        client.get(
            f"/lttng/sessions/{sid}/events", params={"format": "json", "offset": 5, "limit": 7}
        )
    )
    assert page == evs[5:12]
    mid = ndjson(
        client.get(
            f"/lttng/sessions/{sid}/events",
            params={"format": "json", "begin_ns": stamps[20], "end_ns": stamps[29]},
        )
    )
    assert mid == evs[20:30]

    # Text: babeltrace2's own format, one line per event.
    text = client.get(f"/lttng/sessions/{sid}/events", params={"format": "text"}).text
    lines = text.splitlines()
    assert len(lines) == len(evs)
    assert "tracecar_test:tick:" in lines[0] and "seq = 0" in lines[0]

    # The tar.gz opens with babeltrace2 and holds the same events.
    r = client.get(f"/lttng/sessions/{sid}/trace")
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    out = subprocess.run(
        ["babeltrace2", str(tmp_path / "c-exact")], capture_output=True, text=True, check=True
    )
    assert out.stdout.splitlines() == lines

    # The native sink and the Python converter agree on every event.
    regular = subprocess.run(
        babeltrace_argv(tmp_path / "c-exact", fmt="json"), capture_output=True, text=True
    ).stdout
    converted = [json.loads(x) for x in to_ndjson(regular).splitlines()]
    assert _rounded(converted) == _rounded(evs)

    name = client.get(f"/lttng/sessions/{sid}").json()["lttng_name"]
    assert name in daemon_sessions(lt)
    assert client.delete(f"/lttng/sessions/{sid}").status_code == 200
    assert client.get(f"/lttng/sessions/{sid}").status_code == 404
    assert name not in daemon_sessions(lt)
    assert not (lt.data_dir / "lttng" / sid).exists()


def test_python_app_events_and_loglevel(
    client: httpx.Client, pyapp: podsim.Container, batches: Batches
) -> None:
    n = 50
    every = create(
        client,
        {
            "events": [{"domain": "python", "names": ["tracecar.py"]}],
            "pids": [pyapp.pid],
            "start": True,
        },
    )
    warn = create(
        client,
        {
            "events": [{"domain": "python", "names": ["tracecar.*"], "loglevel": "warning"}],
            "pids": [pyapp.pid],
            "start": True,
        },
    )
    batches.fire(pyapp)
    time.sleep(0.3)  # the Python agent hands records to the tracer asynchronously
    for sid in (every, warn):
        act(client, sid, "stop")
    evs = ndjson(client.get(f"/lttng/sessions/{every}/events", params={"format": "json"}))
    assert all(e["name"] == "lttng_python:event" for e in evs)
    msgs = [e["fields"]["msg"] for e in evs]
    expected = []
    for i in range(n):
        expected.append(f"item {i}")
        if i % 10 == 0:
            expected.append(f"warn {i}")
    assert msgs == expected
    assert {e["fields"]["logger_name"] for e in evs} == {"tracecar.py"}
    assert {e["fields"]["int_loglevel"] for e in evs} == {20, 30}
    assert client.get(f"/lttng/sessions/{every}").json()["events"] == len(expected)

    warned = ndjson(client.get(f"/lttng/sessions/{warn}/events", params={"format": "json"}))
    assert [e["fields"]["msg"] for e in warned] == [f"warn {i}" for i in range(0, n, 10)]
    for sid in (every, warn):
        assert client.delete(f"/lttng/sessions/{sid}").status_code == 200


def test_jul_app_events_and_loglevel(
    client: httpx.Client, pod: podsim.SimPod, jul_class: Path
) -> None:
    jul = run_jul_app(pod, "julapp", jul_class, 30)
    try:
        every = create(
            client,
            {
                "events": [{"domain": "jul", "names": ["tracecar.jul"]}],
                "pids": [jul.pid],
                "start": True,
            },
        )
        warn = create(
            client,
            {
                "events": [{"domain": "jul", "names": ["tracecar.*"], "loglevel": "WARNING"}],
                "pids": [jul.pid],
                "start": True,
            },
        )
        go(jul, 1)
        time.sleep(0.3)  # the agent hands records to the tracer asynchronously
        for sid in (every, warn):
            act(client, sid, "stop")
        evs = ndjson(client.get(f"/lttng/sessions/{every}/events", params={"format": "json"}))
        assert {e["name"] for e in evs} == {"lttng_jul:event"}
        expected = []
        for i in range(30):
            expected.append(f"item {i}")
            if i % 10 == 0:
                expected.append(f"warn {i}")
        assert [e["fields"]["msg"] for e in evs] == expected
        assert {e["fields"]["logger_name"] for e in evs} == {"tracecar.jul"}
        warned = ndjson(client.get(f"/lttng/sessions/{warn}/events", params={"format": "json"}))
        assert [e["fields"]["msg"] for e in warned] == ["warn 0", "warn 10", "warn 20"]
        assert {e["fields"]["int_loglevel"] for e in warned} == {900}  # Level.WARNING
        for sid in (every, warn):
            client.delete(f"/lttng/sessions/{sid}")
    finally:
        jul.stop()


def test_filter_and_loglevel(
    client: httpx.Client, capp: podsim.Container, batches: Batches
) -> None:
    filtered = create(
        client,
        {
            "events": [
                {
                    "domain": "userspace",
                    "names": ["tracecar_test:tick"],
                    "filter": "seq >= 90 && seq < 100",
                }
            ],
            "pids": [capp.pid],
            "start": True,
        },
    )
    info = create(
        client,
        {
            "events": [{"domain": "userspace", "names": ["tracecar_test:*"], "loglevel": "INFO"}],
            "pids": [capp.pid],
            "start": True,
        },
    )
    batches.fire(capp)
    for sid in (filtered, info):
        act(client, sid, "stop")
    f = ndjson(client.get(f"/lttng/sessions/{filtered}/events", params={"format": "json"}))
    assert [e["fields"]["seq"] for e in f] == list(range(90, 100))
    i = ndjson(client.get(f"/lttng/sessions/{info}/events", params={"format": "json"}))
    assert len(i) == N and {e["name"] for e in i} == {"tracecar_test:tick"}  # DEBUG excluded
    for sid in (filtered, info):
        client.delete(f"/lttng/sessions/{sid}")


def test_snapshot_captures_latest(client: httpx.Client, pod: podsim.SimPod, c_binary: Path) -> None:
    # On one CPU: LTTng keeps one ring per CPU, each with its own latest events, so an app
    # that moved between CPUs mid-batch leaves a gap between the two rings' tails (pass
    # 28, load average 9: 17,262-17,783 from one ring, 19,384-19,999 from the other).
    need("taskset")
    big = run_c_app(pod, "snapapp", c_binary, 20000, cpu=0)
    try:
        sid = create(
            client,
            {
                "mode": "snapshot",
                "events": [{"domain": "userspace", "names": ["tracecar_test:tick"]}],
                "pids": [big.pid],
                "subbuf_size": 4096,
                "num_subbuf": 4,
                "start": True,
            },
        )
        assert client.post(f"/lttng/sessions/{sid}/rotate").status_code == 409
        trigger(big, 1)
        view = act(client, sid, "snapshot")
        assert view["snapshots"] == 1
        evs = ndjson(client.get(f"/lttng/sessions/{sid}/events", params={"format": "json"}))
        seqs = [e["fields"]["seq"] for e in evs]
        # The CPU's ring buffer keeps the latest events: the tail, contiguous, never all.
        assert 0 < len(seqs) < 20000
        assert seqs[-1] == 19999
        assert seqs == list(range(seqs[0], 20000))
        assert client.delete(f"/lttng/sessions/{sid}").status_code == 200
    finally:
        big.stop()


def test_size_cap_stops_recording(client: httpx.Client, pod: podsim.SimPod, c_binary: Path) -> None:
    big = run_c_app(pod, "capapp", c_binary, 150_000)
    try:
        sid = create(
            client,
            {
                "events": [{"domain": "userspace", "names": ["tracecar_test:tick"]}],
                "pids": [big.pid],
                "max_size_bytes": 1 << 20,
                "subbuf_size": 65536,
                "start": True,
            },
        )
        # One batch is ~5 MB of events, but the cap bounds what reaches the disk: on a
        # busy machine the consumer falls behind the 64 KiB sub-buffers and LTTng
        # discards most of a batch (922,640 bytes were written of one, once). So feed
        # batches until the written trace really crosses the cap; the watchdog must then
        # stop it within a few of its 1 s ticks.
        view: dict[str, Any] = {}
        for batch in range(1, 21):
            trigger(big, batch)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                view = client.get(f"/lttng/sessions/{sid}").json()
                if view["state"] != "active":
                    break
                time.sleep(0.1)
            if view["state"] != "active":
                break
        assert view["state"] == "stopped", {
            k: view.get(k) for k in ("state", "size_bytes", "discarded_events")
        }
        assert "size cap" in view["message"], view
        r = client.post(f"/lttng/sessions/{sid}/start")
        assert r.status_code == 409 and "size cap" in r.json()["detail"]
        assert client.get(f"/lttng/sessions/{sid}/trace").status_code == 200
        assert client.delete(f"/lttng/sessions/{sid}").status_code == 200
    finally:
        big.stop()


def test_rotate(client: httpx.Client, capp: podsim.Container, batches: Batches) -> None:
    sid = create(
        client,
        {"events": [{"domain": "userspace", "names": ["tracecar_test:tick"]}], "pids": [capp.pid]},
    )
    assert client.post(f"/lttng/sessions/{sid}/rotate").status_code == 409  # never started
    assert client.post(f"/lttng/sessions/{sid}/snapshot").status_code == 409  # not snapshot
    act(client, sid, "start")
    assert client.post(f"/lttng/sessions/{sid}/start").status_code == 409
    batches.fire(capp)
    assert act(client, sid, "rotate")["rotations"] == 1
    batches.fire(capp)
    view = act(client, sid, "stop")
    assert view["events"] == 2 * N  # both chunks read as one trace
    client.delete(f"/lttng/sessions/{sid}")


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"events": [{"domain": "dtrace", "names": ["x"]}]}, 422, "domain"),
        ({"events": [{"domain": "kernel", "names": ["sched_switch"]}]}, 409, "kernel"),
        ({"events": [{"domain": "userspace", "names": ["a,b"]}]}, 422, "names"),
        ({"events": [{"domain": "userspace", "names": ["-x"]}]}, 422, "names"),
        (
            {"events": [{"domain": "python", "names": ["x"], "loglevel": "TRACE_INFO"}]},
            422,
            "python log level",
        ),
        ({"events": [{"domain": "userspace", "names": ["x"], "filter": "a\nb"}]}, 422, "filter"),
        ({"events": [{"domain": "userspace", "names": ["x"]}], "mode": "live"}, 409, "relayd"),
        (
            {"events": [{"domain": "userspace", "names": ["x"]}], "subbuf_size": 5000},
            422,
            "power of two",
        ),
        (
            {"events": [{"domain": "userspace", "names": ["x"]}], "contexts": ["perf:cpu"]},
            422,
            "contexts",
        ),
        (
            {"events": [{"domain": "userspace", "names": ["x"]}], "max_duration_s": 1e9},
            422,
            "at most",
        ),
        ({"events": [{"domain": "userspace", "names": ["x"]}], "pids": [4000000]}, 404, "pid"),
        ({"events": []}, 422, "events"),
    ],
)
def test_bad_requests(
    client: httpx.Client, body: dict[str, object], status: int, words: str
) -> None:
    r = client.post("/lttng/sessions", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"], r.json()


def test_filter_rejected_by_lttng_is_422(client: httpx.Client, lt: podsim.AgentHandle) -> None:
    keep = create(client, {"events": [{"domain": "userspace", "names": ["a:*"]}]})
    before = daemon_sessions(lt)
    assert len(before) == 1
    r = client.post(
        "/lttng/sessions",
        json={"events": [{"domain": "userspace", "names": ["x:*"], "filter": "seq >"}]},
    )
    assert r.status_code == 422, r.text
    assert "filter" in r.json()["detail"] and "seq >" in r.json()["detail"]
    assert daemon_sessions(lt) == before  # the half-made session is gone
    client.delete(f"/lttng/sessions/{keep}")


def test_unknown_session_and_dry_run(client: httpx.Client) -> None:
    assert client.get("/lttng/sessions/0123456789ab").status_code == 404
    assert client.post("/lttng/sessions/0123456789ab/start").status_code == 404
    assert client.post("/lttng/sessions/0123456789ab/pause").status_code == 422
    assert client.get("/lttng/sessions/nothex").status_code == 422
    r = client.post(
        "/lttng/sessions?dry_run=true",
        json={
            "events": [{"domain": "userspace", "names": ["a:*"], "filter": "x == 1"}],
            "contexts": ["vtid"],
        },
    )
    assert r.status_code == 200
    cmds = r.json()["commands"]
    assert cmds[0][:2] == ["lttng", "create"]
    assert cmds[2][-2:] == ["--filter", "x == 1"]
    assert client.get("/lttng/sessions").json()["sessions"] == []


def test_expiry_removes_everything(client: httpx.Client, lt: podsim.AgentHandle) -> None:
    sid = create(
        client,
        {
            "events": [{"domain": "userspace", "names": ["tracecar_test:*"]}],
            "max_duration_s": 3,
            "start": True,
        },
    )
    name = client.get(f"/lttng/sessions/{sid}").json()["lttng_name"]
    assert name in daemon_sessions(lt)
    wait_for(lambda: client.get(f"/lttng/sessions/{sid}").status_code == 404, 10, "expiry")
    assert "expired" in client.get(f"/lttng/sessions/{sid}").json()["detail"]
    assert name not in daemon_sessions(lt)
    assert not (lt.data_dir / "lttng" / sid).exists()


def test_limit_on_sessions(client: httpx.Client) -> None:
    ids = [
        create(client, {"events": [{"domain": "userspace", "names": ["a:*"]}]}) for _ in range(4)
    ]
    r = client.post("/lttng/sessions", json={"events": [{"domain": "userspace", "names": ["a:*"]}]})
    assert r.status_code == 429 and "limit" in r.json()["detail"]
    for sid in ids:
        client.delete(f"/lttng/sessions/{sid}")


def test_daemon_restart(
    client: httpx.Client,
    pod: podsim.SimPod,
    lt: podsim.AgentHandle,
    capp: podsim.Container,
    pyapp: podsim.Container,
) -> None:
    # /run, not /var/run: that symlink would resolve against the test's own root.
    port_file = Path(f"/proc/{lt.container.host_pid}/root/run/lttng/agent.port")
    old_port = port_file.read_text().strip()
    sid = create(client, {"events": [{"domain": "userspace", "names": ["a:*"]}], "start": True})
    try:
        old = client.get("/capabilities").json()["lttng"]["sessiond"]["pid"]
        host = [p for p, _comm in pod_processes(pod, "lttng-sessiond") if _ns_pid(p) == old]
        assert host
        os.kill(host[0], signal.SIGKILL)

        def restarted() -> bool:
            s = client.get("/capabilities").json()["lttng"]["sessiond"]
            return bool(s["running"] and s["restarts"] >= 1 and s["pid"] != old)

        wait_for(restarted, 20, "sessiond restart")
        assert client.get(f"/lttng/sessions/{sid}").json()["state"] == "lost"
        assert client.post(f"/lttng/sessions/{sid}/stop").status_code == 409

        # Registered apps come back to the new daemon by themselves: liblttng-ust is
        # woken up, and the Python agent retries every 3 s the port it read at import.
        def registered(domain: str) -> set[int]:
            procs = client.get("/lttng/tracepoints").json()["processes"]
            return {p["pid"] for p in procs if p["domain"] == domain}

        wait_for(lambda: capp.pid in registered("userspace"), 20, "the C app to register again")
        if port_file.exists() and port_file.read_text().strip() == old_port:
            # (podsim shares the host's network: another pod's daemon may have taken
            # the port meanwhile, and then the Python agent cannot find ours.)
            wait_for(lambda: pyapp.pid in registered("python"), 20, "the Python agent")
    finally:
        assert client.delete(f"/lttng/sessions/{sid}").status_code == 200
    # One daemon (and its run-as helper) and at most its own consumers: nothing stray.
    new = client.get("/capabilities").json()["lttng"]["sessiond"]["pid"]
    for p, comm in pod_processes(pod, "lttng-consumer"):
        with contextlib.suppress(ProcessLookupError):
            assert _ns_pid(os.getpgid(p)) == new, (p, comm)


def _ns_pid(host_pid: int) -> int | None:
    try:
        return podsim.ns_pid(host_pid)
    except (FileNotFoundError, RuntimeError):
        return None


def test_shutdown_leaves_nothing(
    client: httpx.Client, pod: podsim.SimPod, lt: podsim.AgentHandle
) -> None:
    """Last: SIGTERM the agent with a session recording; nothing of LTTng must remain."""
    sid = create(client, {"events": [{"domain": "userspace", "names": ["a:*"]}], "start": True})
    assert (lt.data_dir / "lttng" / sid).exists()
    lt.container.stop(signal.SIGTERM, timeout=30)
    assert pod_processes(pod, "lttng-") == []
    assert not (lt.data_dir / "lttng" / sid).exists()
