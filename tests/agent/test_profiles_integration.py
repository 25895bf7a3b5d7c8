"""CPU profiling through the agent in the simulated pod, with the real perf.

The workloads live only in their containers' filesystems (/srv, reached by the
agent through /proc/PID/root) and write their perf maps to their own /tmp.
Durations are short (1-2 s) to keep the suite fast.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import podsim
from tests.agent.support import check_pprof, folded_total, half_written, pod_processes, wait_done
from tests.agent.workloads import HOTCOLD_C, PY_WORK, SHORT_C, compile_c
from tests.conftest import need
from tests.interpreters import PY312

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def apps(
    pod: podsim.SimPod, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, podsim.Container]:
    need("perf", "gcc")
    build = tmp_path_factory.mktemp("build")
    capp = pod.run(
        "capp", ["/srv/hotcold"], files={"hotcold": compile_c(HOTCOLD_C, build / "hotcold")}
    )
    pyapp = pod.run(
        "pyapp",
        [PY312, "/srv/work.py"],
        files={"work.py": PY_WORK.encode()},
        env={"PYTHONPERFSUPPORT": "1"},
    )
    # Let the Python app write its perf map and both burn some CPU.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if Path(f"/proc/{pyapp.host_pid}/root/tmp/perf-{pyapp.pid}.map").exists():
            break
        time.sleep(0.1)
    return {"capp": capp, "pyapp": pyapp}


@pytest.fixture(scope="module")
def short_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c(SHORT_C, tmp_path_factory.mktemp("short") / "short")


@pytest.fixture(autouse=True)
def nothing_left_behind(pod: podsim.SimPod, agent: podsim.AgentHandle) -> Iterator[None]:
    yield
    deadline = time.monotonic() + 15
    while pod_processes(pod, "perf") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pod_processes(pod, "perf") == [], "a perf process was left running"
    assert half_written(agent.data_dir) == [], "half-written artifacts left behind"
    # Perf maps the agent placed in its own /tmp for perf script are gone again.
    agent_tmp = Path(f"/proc/{agent.container.host_pid}/root/tmp")
    assert list(agent_tmp.glob("perf-*.map")) == []


def test_processes_show_containers_and_runtimes(
    client: httpx.Client, apps: dict[str, podsim.Container]
) -> None:
    procs = client.get("/processes").json()
    by_pid = {p["pid"]: p for p in procs}
    c = by_pid[apps["capp"].pid]
    assert c["container"] == "capp" and c["runtime"] == "native" and c["exe"] == "/srv/hotcold"
    # It really burns CPU: over its life, not in /processes' short window, where one
    # clock tick is 5% and a starved app on a busy machine may get one tick or none.
    assert c["cpu_time_s"] > 0 and c["cpu_percent"] >= 0, c
    py = by_pid[apps["pyapp"].pid]
    assert py["container"] == "pyapp" and py["runtime"] == "python"
    assert py["runtime_version"] == "3.12" and py["perf_map"] is True
    assert py["user"] == "root" and py["rss_bytes"] > 0
    assert {p["container"] for p in procs} >= {"agent", "capp", "pyapp"}
    one = client.get(f"/processes/{apps['capp'].pid}")
    assert one.status_code == 200 and one.json()["comm"] == "hotcold"
    assert client.get("/processes/999999").status_code == 404


def test_c_hot_function_dominates(
    client: httpx.Client, agent: podsim.AgentHandle, apps: dict[str, podsim.Container]
) -> None:
    pid = apps["capp"].pid
    r = client.post("/profiles", json={"pid": pid, "duration_s": 2})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/profiles/{job['id']}"
    done = wait_done(client, job["id"])
    assert done["state"] == "succeeded", done
    meta = done["metadata"]
    assert isinstance(meta, dict)
    assert meta["plan"]["call_graph"] == "fp", meta["plan"]
    folded = client.get(f"/profiles/{job['id']}/folded").text
    stacks = folded_total(folded)
    total = sum(stacks.values())
    hot = sum(n for s, n in stacks.items() if "hot_function" in s)
    cold = sum(n for s, n in stacks.items() if "cold_function" in s)
    # 10:1 by work (about 0.91); one CI run on a loaded machine saw 147 of 194 (0.76),
    # left to find: the bound says "dominates", not the exact share.
    assert total > 0 and hot / total >= 0.7 and hot >= 2 * cold, (hot, cold, total)
    # Totals equal perf report's for the same perf.data.
    perf_data = agent.data_dir / "profile" / job["id"] / "perf.data"
    report = subprocess.run(
        ["perf", "report", "-i", str(perf_data), "--stdio", "--sort", "comm"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    samples = int(re.search(r"# Samples: (\d+)", report).group(1))  # type: ignore[union-attr]
    events = int(re.search(r"# Event count \(approx\.\): (\d+)", report).group(1))  # type: ignore[union-attr]
    assert total in (samples, events), (total, samples, events)
    assert meta["samples"] == samples
    # The SVG is well-formed and names the functions.
    svg = client.get(f"/profiles/{job['id']}/flamegraph.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    root = ET.fromstring(svg.content)
    assert root.tag.endswith("svg")
    names = {f for stack in stacks for f in stack.split(";")}
    assert "hot_function" in names
    for name in names:  # every frame of the profile is in the SVG (escaped as XML)
        assert name.replace("&", "&amp;").replace("<", "&lt;").encode() in svg.content, name
    # speedscope and pprof parse.
    sc = client.get(f"/profiles/{job['id']}/speedscope.json").json()
    assert "speedscope" in sc["$schema"]
    names = {f["name"] for f in sc["shared"]["frames"]}
    assert any("hot_function" in n for n in names)
    pb = client.get(f"/profiles/{job['id']}/profile.pb.gz").content
    assert pb[:2] == b"\x1f\x8b"
    check_pprof(pb, "hot_function")
    raw = client.get(f"/profiles/{job['id']}/perf.data").content
    assert raw[:8] == b"PERFILE2"
    # Folded options reach the collapser (pid: "comm-pid;" prefix).
    with_pid = client.get(f"/profiles/{job['id']}/folded", params={"pid": "true"}).text
    assert f"hotcold-{pid};" in with_pid
    assert sum(folded_total(with_pid).values()) == total


def test_python_functions_by_name(client: httpx.Client, apps: dict[str, podsim.Container]) -> None:
    pid = apps["pyapp"].pid
    # perf on Python (profiler perf; auto would pick py-spy): the perf trampoline's names.
    body = {"pid": pid, "profiler": "perf"}
    plan = client.post("/profiles", params={"dry_run": "true"}, json=body).json()["plan"]
    assert plan["call_graph"] == "dwarf" and "perf trampoline" in plan["call_graph_reason"]
    r = client.post(
        "/profiles",
        params={"wait": "true", "format": "folded"},
        json={**body, "duration_s": 1.5},
    )
    assert r.status_code == 200, r.text
    text = r.text
    assert "hot_python_function" in text, text[:2000]
    assert "py::hot_python_function:/srv/work.py" in text  # the perf map's name for it
    job_id = r.headers["location"].rsplit("/", 1)[1]
    meta = client.get(f"/profiles/{job_id}").json()["metadata"]
    assert meta["unresolved"]["perf_maps_used"] == [f"/tmp/perf-{pid}.map"]


def test_unresolved_frames_say_why(
    pod: podsim.SimPod, client: httpx.Client, tmp_path: Path
) -> None:
    hot = compile_c(HOTCOLD_C, tmp_path / "hotcold")
    subprocess.run(["strip", str(hot)], check=True, timeout=30)
    stripped = pod.run("stripped", ["/srv/hotcold"], files={"hotcold": hot})
    nomap = pod.run("nomap", [PY312, "/srv/work.py"], files={"work.py": PY_WORK.encode()})
    try:
        r = client.post(
            "/profiles",
            params={"wait": "true", "format": "folded"},
            json={"pids": [stripped.pid, nomap.pid], "duration_s": 1, "profiler": "perf"},
        )
        assert r.status_code == 200, r.text
        job_id = r.headers["location"].rsplit("/", 1)[1]
        unresolved = client.get(f"/profiles/{job_id}").json()["metadata"]["unresolved"]
        reasons = " | ".join(unresolved["reasons"])
        assert f"pid {stripped.pid}" in reasons and "stripped" in reasons, reasons
        assert f"/tmp/perf-{nomap.pid}.map" in reasons and "PYTHONPERFSUPPORT" in reasons
        assert unresolved["samples_with_unresolved_frames"] > 0, unresolved
        assert unresolved["by_object"], unresolved
    finally:
        stripped.stop()
        nomap.stop()


def test_auto_picks_dwarf_without_frame_pointers(
    pod: podsim.SimPod, client: httpx.Client, tmp_path: Path
) -> None:
    src = tmp_path / "nofp.c"
    src.write_text(HOTCOLD_C)
    exe = tmp_path / "nofp"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True, timeout=60)
    app = pod.run("nofp", ["/srv/nofp"], files={"nofp": exe})
    try:
        r = client.post("/profiles", params={"dry_run": "true"}, json={"pid": app.pid})
        plan = r.json()["plan"]
        assert plan["call_graph"] == "dwarf", plan
        assert "without frame pointers" in plan["call_graph_reason"]
        assert f"dwarf,{16384}" in plan["argv"]
    finally:
        app.stop()


def test_wait_svg_whole_pod_and_container(
    client: httpx.Client, apps: dict[str, podsim.Container]
) -> None:
    r = client.post(
        "/profiles",
        params={"wait": "true", "format": "svg"},
        json={"duration_s": 1, "call_graph": "fp"},
    )
    assert r.status_code == 200, r.text
    assert b"hot_function" in r.content
    job_id = r.headers["location"].rsplit("/", 1)[1]
    meta = client.get(f"/profiles/{job_id}").json()["metadata"]
    agent_pids = {p["pid"] for p in client.get("/processes", params={"sample_ms": 0}).json()
                  if p["container"] == "agent"}  # fmt: skip
    assert not agent_pids & set(meta["plan"]["pids"]), "the agent profiled itself"
    plan = client.post("/profiles", params={"dry_run": "true"}, json={"container": "capp"}).json()
    assert plan["plan"]["pids"] == [apps["capp"].pid]
    assert client.post("/profiles", json={"container": "nope"}).status_code == 404


def _metrics(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith(
        "text/plain; version=0.0.4"
    )
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def test_a_real_profile_shows_in_the_metrics(
    client: httpx.Client, apps: dict[str, podsim.Container]
) -> None:
    before = _metrics(client)
    r = client.post(
        "/profiles", params={"wait": "true"}, json={"pid": apps["capp"].pid, "duration_s": 1}
    )
    assert r.status_code == 200, r.text
    after = _metrics(client)

    def grew(name: str, *labels: tuple[str, str]) -> float:
        key = (name, tuple(sorted(labels)))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("tracecar_agent_profiles_started_total") == 1
    assert grew("tracecar_agent_profiles_failed_total") == 0
    assert after[("tracecar_agent_profiles_running", ())] == 0
    # perf record ran about a second, then perf script post-processed it: both measured.
    perf = ("tool", "perf")
    assert grew("tracecar_agent_tool_duration_seconds_count", perf) >= 2
    assert grew("tracecar_agent_tool_duration_seconds_sum", perf) >= 1.0
    assert grew("tracecar_agent_tool_duration_seconds_bucket", perf, ("le", "0.5")) < grew(
        "tracecar_agent_tool_duration_seconds_count", perf
    )
    # Its artifacts are on disk: perf.data, the flame graph, ...
    assert grew("tracecar_agent_stored_bytes", ("capability", "profiles")) > 1000


def test_delete_stops_early_and_keeps_the_recording(
    client: httpx.Client, apps: dict[str, podsim.Container]
) -> None:
    r = client.post("/profiles", json={"pid": apps["capp"].pid, "duration_s": 60})
    job_id = r.json()["id"]
    # Running and recording (perf may take a while to start on a busy machine).
    deadline = time.monotonic() + 30
    while True:
        running = client.get(f"/profiles/{job_id}").json()
        if running["state"] == "running" and running["progress"] > 0:
            break
        assert time.monotonic() < deadline, running
        time.sleep(0.2)
    assert running["progress"] < 0.5, running
    time.sleep(2)  # recording: a floor for samples of the busy app before stopping it
    d = client.delete(f"/profiles/{job_id}")
    assert d.status_code == 202, d.text
    done = wait_done(client, job_id)
    assert done["state"] == "succeeded", done
    assert done["metadata"]["stopped_early"] is True  # type: ignore[index]
    assert done["elapsed_s"] < 50  # type: ignore[operator]  # stopped, not the planned 60 s
    assert "hot_function" in client.get(f"/profiles/{job_id}/folded").text
    assert client.delete(f"/profiles/{job_id}").status_code == 204
    assert client.get(f"/profiles/{job_id}").status_code == 404
    # discard=true removes a running one at once.
    job2 = client.post("/profiles", json={"pid": apps["capp"].pid, "duration_s": 30}).json()["id"]
    time.sleep(0.5)
    assert client.delete(f"/profiles/{job2}", params={"discard": "true"}).status_code == 204
    assert client.get(f"/profiles/{job2}").status_code == 404


def test_pid_exiting_mid_recording(
    pod: podsim.SimPod, client: httpx.Client, short_binary: Path
) -> None:
    # It burns CPU for 2-3 s (whole seconds of time(2)), then exits.
    short = pod.run("short", ["/srv/short", "3"], files={"short": short_binary})
    r = client.post("/profiles", json={"pid": short.pid, "duration_s": 60})
    assert r.status_code == 202, r.text
    done = wait_done(client, r.json()["id"], timeout=120)
    assert done["state"] == "succeeded", (done, short.log())
    meta = done["metadata"]
    assert meta["exited_pids"] == [short.pid]  # type: ignore[index]
    assert any("exited" in n for n in meta["notes"])  # type: ignore[index]
    # perf ends with its last target, not at the planned 60 s (however slow the machine).
    assert done["elapsed_s"] < 50  # type: ignore[operator]
    assert done["metadata"]["samples"] > 0  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"pid": -1}, 422, "pid"),
        ({"pid": 10**12}, 422, "pid"),
        ({"pid": 999_999}, 404, "no process"),
        ({"duration_s": -5}, 422, "between 0.1 and 300"),
        ({"duration_s": 1e9}, 422, "between 0.1 and 300"),
        ({"frequency_hz": 0}, 422, "between 1 and 999"),
        ({"frequency_hz": 10**6}, 422, "between 1 and 999"),
        ({"call_graph": "lbr"}, 422, "call_graph"),
        ({"pid": 1, "container": "capp"}, 422, "at most one"),
        ({"container": "bad name;rm"}, 422, "container"),
        ({"bogus": 1}, 422, "bogus"),
        ({"pid": "seven"}, 422, "pid"),
    ],
)
def test_bad_input(client: httpx.Client, body: dict[str, object], status: int, words: str) -> None:
    r = client.post("/profiles", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"], r.json()
    assert list(client.get("/profiles").json()) == [] or all(
        p["request"] != body for p in client.get("/profiles").json()
    )


def test_garbage_and_unknown_ids(client: httpx.Client) -> None:
    r = client.post("/profiles", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"], r.text
    r = client.post("/profiles", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert client.get("/profiles/0123456789ab").status_code == 404
    assert client.get("/profiles/../etc").status_code == 404
    assert client.get("/profiles/XYZ").status_code == 422
    assert client.get("/processes/-3").status_code == 422
    assert client.get("/processes", params={"sample_ms": -1}).status_code == 422


def test_capabilities(client: httpx.Client) -> None:
    caps = client.get("/capabilities").json()
    assert caps["tools"]["perf"]["available"] is True
    assert caps["perf_event_paranoid"] is not None
    assert "SYS_ADMIN" in caps["capabilities"]
    assert caps["tracefs"]["available"] is True
    assert caps["kernel_tracing"]["available"] is False and caps["kernel_tracing"]["reason"]
    assert caps["profiling"]["available"] is True
    assert set(caps) >= {"profiling", "probes", "lttng"}


def test_bearer_token(pod: podsim.SimPod) -> None:
    token = "s3cret-token-of-this-test"
    handle = podsim.start_agent(pod, token=token)
    # Without the token, and with the handle's timeout: the first request may wait for
    # the app to finish loading (httpx.get's default 5 s ran out once, under load).
    anon = handle.client(authenticated=False)
    try:
        assert anon.get("/healthz").status_code == 200
        for path in ("/processes", "/capabilities", "/profiles"):
            r = anon.get(path)
            assert r.status_code == 401 and "Bearer" in r.json()["detail"]
            r = anon.get(path, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401
        # Bad tokens through the real server (uvicorn's header parsing included): 401.
        for bad in (
            b"Bearer",  # empty (a client strips the trailing space)
            b"Bearer " + "caf\u00e9".encode("latin-1"),
            b"Bearer " + "\u2603".encode(),
            b"Bearer " + b"A" * 10_000,
            b"Bearer " + token.encode() + b"x",
        ):
            r = anon.get("/processes", headers={"Authorization": bad})
            assert r.status_code == 401, (bad[:20], r.status_code, r.text[:200])
            assert token not in r.text
        # A header past the HTTP server's own limit is refused before it reaches the
        # agent: a 4xx when the client reads the answer in time, or the connection
        # reset (the server closes while the client is still sending). Never served.
        try:
            huge = {"Authorization": b"Bearer " + b"A" * 100_000}
            r = anon.get("/processes", headers=huge)
            assert 400 <= r.status_code < 500 and token not in r.text
        except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
            pass
        assert anon.get("/healthz").status_code == 200
        with handle.client() as c:
            assert c.get("/processes", params={"sample_ms": 0}).status_code == 200
            assert c.get("/capabilities").json()["auth"]["source"] == "env"
        assert token not in handle.container.log()
        # The exec probe of the sidecar.
        env = {**os.environ, "TRACECAR_AGENT_PORT": handle.url.rsplit(":", 1)[1]}
        ok = subprocess.run(
            [*podsim_python(), "-m", "agent", "healthcheck"],
            env=env, cwd=str(podsim.REPO), timeout=30, check=False,
        )  # fmt: skip
        assert ok.returncode == 0
        env["TRACECAR_AGENT_PORT"] = str(podsim.free_port())
        bad = subprocess.run(
            [*podsim_python(), "-m", "agent", "healthcheck"],
            env=env, cwd=str(podsim.REPO), timeout=30, check=False, capture_output=True,
        )  # fmt: skip
        assert bad.returncode == 1 and b"unhealthy" in bad.stderr
    finally:
        anon.close()
        handle.container.stop()


def podsim_python() -> list[str]:
    import sys

    return [sys.executable]


def test_perf_failure_is_perf_own_message(pod: podsim.SimPod, client: httpx.Client) -> None:
    # A zombie has a /proc entry but no threads to attach to: perf itself refuses.
    parent = pod.run("zombie", ["sh", "-c", "sleep 0 & exec sleep 60"])
    deadline = time.monotonic() + 10
    zombie = None
    while zombie is None and time.monotonic() < deadline:
        procs = client.get("/processes", params={"sample_ms": 0}).json()
        zombie = next(
            (p["pid"] for p in procs if p["ppid"] == parent.pid and p["state"] == "Z"), None
        )
        time.sleep(0.1)
    assert zombie is not None
    try:
        r = client.post("/profiles", json={"pid": zombie, "duration_s": 1})
        assert r.status_code == 202, r.text
        done = wait_done(client, r.json()["id"])
        assert done["state"] == "failed"
        assert "sys_perf_event_open" in str(done["error"]), done["error"]
        r = client.post("/profiles", params={"wait": "true"}, json={"pid": zombie, "duration_s": 1})
        assert r.status_code == 502 and "No such process" in r.json()["detail"], r.text
        assert client.get(f"/profiles/{done['id']}/flamegraph.svg").status_code == 409
        # Profiling the zombie's container (or the pod) leaves the zombie out and works.
        plan = client.post("/profiles", params={"dry_run": "true"}, json={"container": "zombie"})
        assert plan.json()["plan"]["pids"] == [parent.pid], plan.text
        whole = client.post("/profiles", params={"dry_run": "true"}).json()["plan"]
        assert parent.pid in whole["pids"] and zombie not in whole["pids"], whole
    finally:
        parent.stop()


def test_perf_missing_is_503(pod: podsim.SimPod, tmp_path: Path) -> None:
    # A PATH with what the pod's container launcher needs, and no perf.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("nsenter", "unshare", "sh", "mount", "cp", "mkdir", "rmdir"):
        (bin_dir / tool).symlink_to(shutil.which(tool))  # type: ignore[arg-type]
    handle = podsim.start_agent(pod, env={"PATH": str(bin_dir)})
    try:
        with handle.client() as c:
            r = c.post("/profiles", json={"duration_s": 1})
            assert r.status_code == 503 and "/capabilities" in r.json()["detail"], r.text
            caps = c.get("/capabilities").json()
            assert caps["profiling"]["available"] is False
            assert "not installed" in caps["profiling"]["reason"]
    finally:
        handle.container.stop()


def test_sigterm_keeps_the_recording(pod: podsim.SimPod, apps: dict[str, podsim.Container]) -> None:
    handle = podsim.start_agent(pod)
    with handle.client() as c:
        r = c.post("/profiles", json={"pid": apps["capp"].pid, "duration_s": 60})
        job_id = r.json()["id"]
        time.sleep(1.5)
    handle.container.stop()  # SIGTERM, as the kubelet does
    job_dir = handle.data_dir / "profile" / job_id
    meta = json.loads((job_dir / "job.json").read_text())
    assert meta["state"] == "succeeded", meta
    assert meta["result"]["stopped_early"] is True
    assert (job_dir / "perf.data").stat().st_size > 0
    assert "hot_function" in (job_dir / "folded.txt").read_text()
    assert pod_processes(pod, "perf") == []


def test_concurrency_limit_is_429(client: httpx.Client, apps: dict[str, podsim.Container]) -> None:
    pid = apps["capp"].pid
    ids = [client.post("/profiles", json={"pid": pid, "duration_s": 30}).json()["id"] for _ in "ab"]
    try:
        r = client.post("/profiles", json={"pid": pid, "duration_s": 1})
        assert r.status_code == 429 and "limit" in r.json()["detail"], r.text
    finally:
        for job_id in ids:
            assert (
                client.delete(f"/profiles/{job_id}", params={"discard": "true"}).status_code == 204
            )
