"""``GET /processes/{pid}/stack`` in the simulated pod, with the real py-spy, jattach and gdb.

One process per runtime, each blocked in a known function and living only in its
own container's filesystem (/srv) with a private /tmp: Python 3.12 started
without any perf variable, a C program, a JVM (one per module: it starts
slowly) and a Go program. After every test no stack tool is left running in the
pod and every target is still running (no thread stopped: state not t/T).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import podsim
from tests.conftest import need
from tests.interpreters import PY312
from tests.stacks.support import tids, wait_ready
from tests.stacks.workloads import (
    C_BLOCKED,
    JAVA_SLEEPER,
    PY_BLOCKED,
    build_c,
    build_go,
    build_java,
    go_tool,
)

pytestmark = pytest.mark.integration

TOOLS = ("py-spy", "jattach", "gdb", "eu-stack")
TEXT = "text/plain; charset=utf-8"
# Where the workloads block (1-based lines of their sources).
PY_LINE = PY_BLOCKED.splitlines().index("    time.sleep(100000)") + 1
C_LINE = C_BLOCKED.splitlines().index("    for (;;) pause();") + 1
JAVA_LINE = JAVA_SLEEPER.splitlines().index("        Thread.sleep(1000000000L);") + 1


def pod_processes(pod: podsim.SimPod, names: tuple[str, ...]) -> list[str]:
    """``comm`` of the processes called one of ``names`` in this pod's PID namespace only
    (other suites on the machine may run their own)."""
    ns = os.readlink(f"/proc/{pod.infra_pid}/ns/pid")
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            comm = (d / "comm").read_text().strip()
            if comm in names and os.readlink(d / "ns/pid") == ns:
                found.append(f"{comm}:{d.name}")
        except OSError:
            continue
    return found


def thread_states(c: podsim.Container) -> set[str]:
    states = set()
    for task in Path(f"/proc/{c.host_pid}/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except OSError:
            continue
        states.add(text[text.rindex(")") + 2])
    return states


@pytest.fixture(scope="module")
def apps(pod: podsim.SimPod, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    need("gcc", "javac", "java", "gdb", "jattach")
    assert go_tool(), "no Go toolchain: the polyglot machine kind has /usr/local/go/bin/go"
    build = tmp_path_factory.mktemp("stacks-build")
    cbin = build_c(build / "blocked")
    java_class = build_java(build)
    java = pod.run("japp", ["java", "-cp", "/srv", "Sleeper"], files={"Sleeper.class": java_class})
    apps = {
        "py": pod.run("pyapp", [PY312, "/srv/wait.py"], files={"wait.py": PY_BLOCKED.encode()}),
        "c": pod.run("capp", ["/srv/blocked"], files={"blocked": cbin}),
        "go": pod.run("goapp", ["/srv/goblocked"], files={"goblocked": build_go(build)}),
        "java": java,
    }
    for c in apps.values():
        wait_ready(c)
    return {**apps, "cbin": cbin, "java_class": java_class}


@pytest.fixture
def client(agent: podsim.AgentHandle) -> Iterator[httpx.Client]:
    with agent.client(timeout=60) as c:
        yield c


@pytest.fixture(autouse=True)
def nothing_left_behind(pod: podsim.SimPod, apps: dict[str, Any]) -> Iterator[None]:
    yield
    deadline = time.monotonic() + 10
    while pod_processes(pod, TOOLS) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pod_processes(pod, TOOLS) == [], "a stack tool was left running"
    for key in ("py", "c", "go", "java"):
        c = apps[key]
        assert c.alive(), f"{c.name} died: {c.log()}"
        assert not thread_states(c) & {"t", "T"}, f"{c.name} left stopped: {thread_states(c)}"


def stack(client: httpx.Client, pid: int, **params: str) -> dict[str, Any]:
    r = client.get(f"/processes/{pid}/stack", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body: dict[str, Any] = r.json()
    return body


def functions(thread: dict[str, Any]) -> list[str]:
    return [f["function"] for f in thread["frames"]]


def by_name(body: dict[str, Any], name: str) -> dict[str, Any]:
    found = [t for t in body["threads"] if t["name"] == name]
    assert found, [t["name"] for t in body["threads"]]
    return found[0]


# --- Python -----------------------------------------------------------------------


def test_python_stack_shows_main_then_wait_here(client: httpx.Client, apps: dict[str, Any]) -> None:
    py = apps["py"]
    body = stack(client, py.pid)
    assert (body["pid"], body["runtime"], body["kind"], body["tool"]) == (
        py.pid, "python", "python", "py-spy",
    )  # fmt: skip
    main = by_name(body, "MainThread")
    assert main["tid"] == py.pid and main["state"].startswith("idle")
    assert functions(main) == ["wait_here", "main", "<module>"]
    inner = main["frames"][0]
    # The script exists only in the app container: its path and line, as the app sees them.
    assert inner["file"] == "/srv/wait.py" and inner["line"] == PY_LINE, inner
    helper = by_name(body, "helper")
    assert functions(helper)[0] == "worker_loop"
    assert {t["tid"] for t in body["threads"]} == tids(py)
    assert body["duration_ms"] > 0 and body["taken_at"] > time.time() - 600


def test_python_text_is_py_spy_own_dump(client: httpx.Client, apps: dict[str, Any]) -> None:
    py = apps["py"]
    for kw in ({"params": {"format": "text"}}, {"headers": {"Accept": "text/plain"}}):
        r = client.get(f"/processes/{py.pid}/stack", **kw)  # type: ignore[arg-type]
        assert r.status_code == 200 and r.headers["content-type"] == TEXT, r.text
        assert f'Thread {py.pid} (idle): "MainThread"' in r.text, r.text
        lines = [ln.strip() for ln in r.text.splitlines()]
        inner = f"wait_here (wait.py:{PY_LINE})"
        at = next(i for i, ln in enumerate(lines) if ln.startswith(inner))
        assert lines[at + 1].startswith("main (wait.py:"), r.text


def test_python_with_native_frames(client: httpx.Client, apps: dict[str, Any]) -> None:
    body = stack(client, apps["py"].pid, native="true")
    assert body["kind"] == "python+native"
    names = functions(by_name(body, "MainThread"))
    # The C frames of time.sleep, then the Python ones.
    assert "time_sleep" in names and names.index("time_sleep") < names.index("wait_here")
    assert names.index("wait_here") + 1 == names.index("main")
    native = next(f for f in by_name(body, "MainThread")["frames"] if f["function"] == "time_sleep")
    assert native["module"].endswith(".so.1.0") and native["file"] is None


def test_python_forced_native_shows_the_interpreter(
    client: httpx.Client, apps: dict[str, Any]
) -> None:
    body = stack(client, apps["py"].pid, runtime="native")
    assert (body["kind"], body["tool"]) == ("native", "gdb")
    names = functions(body["threads"][0])
    assert "_PyEval_EvalFrameDefault" in names and "wait_here" not in names
    assert any("runtime=auto" in n for n in body["notes"])


# --- native (C) -------------------------------------------------------------------


def test_c_stack_shows_blocked_here_and_main(client: httpx.Client, apps: dict[str, Any]) -> None:
    c = apps["c"]
    body = stack(client, c.pid)
    assert (body["runtime"], body["kind"], body["tool"]) == ("native", "native", "gdb")
    (thread,) = body["threads"]
    assert thread["tid"] == c.pid and thread["name"] == "blocked"
    names = functions(thread)
    # The binary exists only in the app's mount namespace; its symbols are still named.
    at = names.index("blocked_here")
    assert names[at + 1] == "main", names
    frame = thread["frames"][at]
    # gdb's file is the one the compiler saw (DWARF), not the container's.
    assert frame["file"].endswith("/blocked.c") and frame["line"] == C_LINE, frame
    assert frame["address"].startswith("0x"), frame
    text = client.get(f"/processes/{c.pid}/stack", params={"format": "text"})
    assert text.status_code == 200 and text.headers["content-type"] == TEXT
    assert text.text.startswith("Thread 1 ") and " in blocked_here () at " in text.text, text.text
    assert "[Inferior" not in text.text


def test_python_on_a_c_process_is_409(client: httpx.Client, apps: dict[str, Any]) -> None:
    for runtime in ("python", "java"):
        r = client.get(f"/processes/{apps['c'].pid}/stack", params={"runtime": runtime})
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert "runtime is native" in detail and "runtime=native" in detail, detail
    r = client.get(f"/processes/{apps['c'].pid}/stack", params={"native": "true"})
    assert r.status_code == 422 and r.json()["field"] == "native", r.text


def test_a_process_another_tracer_holds_is_409_naming_it(
    pod: podsim.SimPod, client: httpx.Client, apps: dict[str, Any]
) -> None:
    c = apps["c"]
    # A debugger in another container of the pod, attached for a few seconds.
    holder = pod.run(
        "debugger",
        ["gdb", "-nx", "-batch", "-iex", f"set sysroot /proc/{c.pid}/root",
         "-p", str(c.pid), "-ex", "shell sleep 3"],
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while "\nTracerPid:\t0\n" in Path(f"/proc/{c.host_pid}/status").read_text():
        assert time.monotonic() < deadline and holder.alive(), holder.log()
        time.sleep(0.02)
    r = client.get(f"/processes/{c.pid}/stack")
    assert r.status_code == 409, r.text
    assert f"already traced by pid {holder.pid} (gdb)" in r.json()["detail"], r.text
    holder.launcher.wait(20)  # it detaches; the process runs on (checked after the test)


def test_capabilities_say_every_kind_works(client: httpx.Client) -> None:
    caps = client.get("/capabilities").json()["stacks"]
    assert caps["available"] is True and caps["kinds"] == {
        "python": True, "java": True, "native": True,
    }, caps  # fmt: skip
    assert caps["tools"]["py-spy"]["version"].startswith("0.4")
    assert caps["tools"]["gdb"]["available"] and caps["tools"]["jattach"]["available"]


def test_no_such_pid_is_404(client: httpx.Client) -> None:
    r = client.get("/processes/4000000/stack")
    assert r.status_code == 404 and "no process with pid 4000000" in r.json()["detail"]


# --- Java ---------------------------------------------------------------------------


def test_java_stack_shows_sleeper_wait_here(client: httpx.Client, apps: dict[str, Any]) -> None:
    java = apps["java"]
    body = stack(client, java.pid)
    assert (body["runtime"], body["kind"], body["tool"]) == ("java", "java", "jattach")
    sleeper = by_name(body, "sleeper-thread")
    assert sleeper["state"] == "TIMED_WAITING (sleeping)"
    assert functions(sleeper)[:2] == ["java.lang.Thread.sleep", "Sleeper.waitHere"]
    wait = sleeper["frames"][1]
    assert (wait["file"], wait["line"]) == ("Sleeper.java", JAVA_LINE), wait
    assert sleeper["tid"] in tids(java)
    main = by_name(body, "main")
    assert "Sleeper.main" in functions(main)
    text = client.get(f"/processes/{java.pid}/stack", params={"format": "text"})
    assert text.status_code == 200 and text.headers["content-type"] == TEXT
    assert text.text.startswith("20") and "Full thread dump" in text.text  # the JVM's own dump
    assert f"\tat Sleeper.waitHere(Sleeper.java:{JAVA_LINE})" in text.text, text.text
    r = client.get(f"/processes/{java.pid}/stack", params={"runtime": "python"})
    assert r.status_code == 409 and "runtime is java" in r.json()["detail"], r.text


def test_a_jvm_refusing_the_attach_is_409_and_runs_on(
    pod: podsim.SimPod, client: httpx.Client, apps: dict[str, Any]
) -> None:
    jvm = pod.run(
        "noattach", ["java", "-XX:+DisableAttachMechanism", "-cp", "/srv", "Sleeper"],
        files={"Sleeper.class": apps["java_class"]},
    )  # fmt: skip
    try:
        wait_ready(jvm)
        r = client.get(f"/processes/{jvm.pid}/stack")
        assert r.status_code == 409, r.text
        body = r.json()
        assert body["tool"] == "jattach" and "answers no attach" in body["detail"], body
        assert "DisableAttachMechanism" in body["detail"] and "runtime=native" in body["detail"]
        # Refused up front: no SIGQUIT was sent (it would print a thread dump in the app's
        # own log), so no attach was tried and waited for (a fact, not a stopwatch).
        assert "Full thread dump" not in jvm.log()
        assert jvm.alive() and not thread_states(jvm) & {"t", "T"}
        # Its native stacks are still there for the asking.
        native = stack(client, jvm.pid, runtime="native")
        assert native["kind"] == "native" and len(native["threads"]) > 5
    finally:
        jvm.stop(signal.SIGKILL)


# --- Go -------------------------------------------------------------------------------


def test_go_stack_shows_blocked_here(client: httpx.Client, apps: dict[str, Any]) -> None:
    go = apps["go"]
    body = stack(client, go.pid)
    assert (body["runtime"], body["kind"], body["tool"]) == ("go", "native", "gdb")
    main = next(t for t in body["threads"] if t["tid"] == go.pid)
    names = functions(main)
    at = names.index("main.blockedHere")
    assert names[at + 1] == "main.main", names
    assert main["frames"][at]["file"].endswith("main.go")
    assert any("goroutine" in n for n in body["notes"])
    assert {t["tid"] for t in body["threads"]} == tids(go)


# --- a process that goes away; a tool that hangs ---------------------------------------


def test_process_exiting_mid_snapshot_is_404(
    pod: podsim.SimPod, client: httpx.Client, apps: dict[str, Any]
) -> None:
    # 300 threads: gdb takes long enough attaching to them to be caught at it.
    victim = pod.run("victim", ["/srv/blocked", "300"], files={"blocked": apps["cbin"]})
    wait_ready(victim)
    answer: dict[str, httpx.Response] = {}
    call = threading.Thread(
        target=lambda: answer.setdefault("r", client.get(f"/processes/{victim.pid}/stack"))
    )
    call.start()
    deadline = time.monotonic() + 20
    while True:
        status = Path(f"/proc/{victim.host_pid}/status").read_text()
        if "\nTracerPid:\t0\n" not in status:
            break
        assert time.monotonic() < deadline and call.is_alive(), "gdb never attached"
        time.sleep(0.002)
    os.kill(victim.host_pid, signal.SIGKILL)
    call.join(30)
    r = answer["r"]
    assert r.status_code == 404, r.text
    assert "exited during the snapshot" in r.json()["detail"], r.text


def test_tool_timeout_is_504_and_the_target_runs_on(
    pod: podsim.SimPod, apps: dict[str, Any]
) -> None:
    # gdb needs ~0.2 s to start and ~0.4 ms per thread to attach and unwind: with 3000
    # threads it takes over a second on a fast machine, so a 0.3 s limit kills it while
    # it is attached (a 300-thread target finished inside 0.2 s on one CI machine).
    slow = podsim.start_agent(pod, env={"TRACECAR_AGENT_STACK_TIMEOUT_S": "0.3"})
    target = pod.run("slowapp", ["/srv/blocked", "3000"], files={"blocked": apps["cbin"]})
    wait_ready(target)
    try:
        with slow.client(timeout=60) as c:
            r = c.get(f"/processes/{target.pid}/stack")
        assert r.status_code == 504, r.text
        assert r.json()["tool"] == "gdb" and "within 0.3 s" in r.json()["detail"], r.text
        # Killed mid-attach, gdb must not leave the target (or any of its threads) stopped.
        for _ in range(20):
            assert target.alive() and not thread_states(target) & {"t", "T"}, thread_states(target)
            time.sleep(0.05)
    finally:
        target.stop(signal.SIGKILL)
        slow.container.stop()
