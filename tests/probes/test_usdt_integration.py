"""USDT probes and Python functions through the agent, in the simulated pod, with the real bpftrace.

The app is Debian's /usr/bin/python3.11 (built with USDT probes: python:function__entry,
function__return, line, ...) running a script that exists only in its own container
(/srv). A batch starts when /tmp/go-B appears in the app's /tmp: main then calls
app.slow() (time.sleep(0.05)) SLOW times, app.slower() (a name that starts like slow:
the filter must be exact) SLOW times, other.slow() (same name, another file) FAST times
and app.rec(3) (recursion: four nested calls) once, and writes /tmp/done-B.
The same script also runs under a C program linked against Debian's shared
libpython3.11.so (the notes are in the library, not the executable). The pyenv
Python 3.12 has no probes at all: the agent must say so and point elsewhere.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import podsim
from tests.conftest import need
from tests.interpreters import PY311_DEBIAN, PY312
from tests.probes.support import (
    assert_no_leftovers,
    attach,
    detach,
    events_of,
)

pytestmark = pytest.mark.integration

PY311 = PY311_DEBIAN
SLOW = 4
FAST = 7

APP = """\
import os
import time

import other


def slow():
    time.sleep(0.05)


def slower():
    return 1


def rec(n):
    if n:
        rec(n - 1)


def main():
    open("/tmp/ready", "w").close()
    batch = 0
    while True:
        batch += 1
        while not os.path.exists(f"/tmp/go-{batch}"):
            time.sleep(0.005)
        for _ in range(SLOW):
            slow()
            slower()
        for _ in range(FAST):
            other.slow()
        rec(3)
        open(f"/tmp/done-{batch}", "w").close()


main()
""".replace("SLOW", str(SLOW)).replace("FAST", str(FAST))

OTHER = """\
def slow():
    return 2
"""

SLOW_DEF_LINE = APP.splitlines().index("def slow():") + 1


class PyApp:
    def __init__(self, c: podsim.Container) -> None:
        self.c = c
        self.batches = 0
        self.root = Path(f"/proc/{c.host_pid}/root")
        deadline = time.monotonic() + 20
        while not (self.root / "tmp/ready").exists():
            assert c.alive() and time.monotonic() < deadline, c.log()
            time.sleep(0.01)

    @property
    def pid(self) -> int:
        return self.c.pid

    def batch(self) -> None:
        self.batches += 1
        (self.root / f"tmp/go-{self.batches}").write_text("")
        done = self.root / f"tmp/done-{self.batches}"
        deadline = time.monotonic() + 30
        while not done.exists():
            assert time.monotonic() < deadline, "python batch did not finish"
            time.sleep(0.01)


@pytest.fixture(scope="module")
def py311(pod: podsim.SimPod) -> Iterator[PyApp]:
    need("bpftrace")
    c = pod.run(
        "py311",
        [PY311, "/srv/app.py"],
        files={"app.py": APP, "other.py": OTHER},
        env={"PYTHONPATH": "/srv", "PYTHONDONTWRITEBYTECODE": "1"},
    )
    yield PyApp(c)
    c.stop(signal.SIGKILL)


def python_uprobes() -> list[str]:
    path = Path("/sys/kernel/tracing/uprobe_events")
    text = path.read_text() if path.exists() else ""
    return [ln for ln in text.splitlines() if "python" in ln]


@pytest.fixture
def client(agent: podsim.AgentHandle) -> Iterator[httpx.Client]:
    with agent.client() as c:
        yield c
    assert_no_leftovers(agent)
    assert not python_uprobes()


def py_probe(app: PyApp, **body: Any) -> dict[str, Any]:
    return {"pid": app.pid, "duration_s": 30, **body}


# --- Python functions --------------------------------------------------------------


def test_latency_histogram_of_a_python_function(client: httpx.Client, py311: PyApp) -> None:
    probe = attach(
        client,
        py_probe(py311, python_function="slow", python_file="app.py", mode="histogram"),
    )
    assert probe["backend"] == "bpftrace"
    assert probe["target"]["binary"] == PY311
    assert probe["target"]["usdt"] == "python:function__entry"
    assert probe["target"]["usdt_return"] == "python:function__return"
    py311.batch()
    state = detach(client, probe["id"])
    assert state["hits"] == SLOW, state
    summary = state["summary"]
    assert summary["unit"] == "ns"
    counted = {(b["min"], b["max"]): b["count"] for b in summary["histogram"] if b["count"]}
    # time.sleep(0.05): 50 ms, in the 32-64 ms power-of-two bucket.
    assert counted == {(1 << 25, (1 << 26) - 1): SLOW}, summary


def test_counts_filtered_by_function_and_file(client: httpx.Client, py311: PyApp) -> None:
    bodies = {
        "slow in app.py": (py_probe(py311, python_function="slow", python_file="app.py"), SLOW),
        "slow in other.py": (
            py_probe(py311, python_function="slow", python_file="/srv/other.py"),
            FAST,
        ),
        "slow anywhere": (py_probe(py311, python_function="slow"), SLOW + FAST),
        "slower": (py_probe(py311, python_function="slower"), SLOW),
    }
    ids = {k: attach(client, {**b, "mode": "count"})["id"] for k, (b, _) in bodies.items()}
    py311.batch()
    got = {k: detach(client, i)["hits"] for k, i in ids.items()}
    assert got == {k: n for k, (_, n) in bodies.items()}


def test_events_carry_function_file_line_and_latency(client: httpx.Client, py311: PyApp) -> None:
    slow = attach(client, py_probe(py311, python_function="slow", python_file="app.py"))
    rec = attach(client, py_probe(py311, python_function="rec"))
    py311.batch()
    detach(client, slow["id"])
    detach(client, rec["id"])
    events = events_of(client, slow["id"])
    assert len(events) == SLOW, events
    for e in events:
        assert e["function"] == "slow" and e["file"] == "/srv/app.py", e
        assert e["line"] == SLOW_DEF_LINE and e["return_line"] > SLOW_DEF_LINE, e
        assert 45_000_000 <= e["latency_ns"] < 1_000_000_000, e
        assert e["pid"] == py311.pid and e["tid"] == py311.pid
    # rec(3): four nested calls, the innermost returns first; each outer call lasts longer.
    nested = events_of(client, rec["id"])
    assert [e["function"] for e in nested] == ["rec"] * 4, nested
    latencies = [e["latency_ns"] for e in nested]
    assert latencies == sorted(latencies) and latencies[0] > 0, latencies


def test_dry_run_shows_the_usdt_program(client: httpx.Client, py311: PyApp) -> None:
    r = client.post(
        "/probes?dry_run=true",
        json=py_probe(py311, python_function="slow", mode="histogram"),
    )
    assert r.status_code == 200, r.text
    plan = r.json()["plan"]
    root = f"/proc/{py311.pid}/root{PY311}"
    assert f"usdt:{root}:python:function__entry /" in plan["program"]
    assert f"usdt:{root}:python:function__return /" in plan["program"]
    assert 'str(arg1) == "slow"' in plan["program"]
    assert plan["argv"][:5] == ["bpftrace", "-f", "json", "-p", str(py311.pid)]
    assert plan["env"]["BPFTRACE_STRLEN"] == "200"
    assert "python:line" in plan["note"]


EMBED_C = r"""
#include <Python.h>
/* Python's own main, linked against the shared libpython: its USDT notes live there. */
int main(int argc, char **argv) { return Py_BytesMain(argc, argv); }
"""


def test_a_shared_libpython_carries_the_probes(
    client: httpx.Client, pod: podsim.SimPod, tmp_path: Path
) -> None:
    need("gcc")
    src = tmp_path / "embed.c"
    src.write_text(EMBED_C)
    exe = tmp_path / "pyembed"
    includes = ["-I/usr/include/python3.11", "-I/usr/include/x86_64-linux-gnu/python3.11"]
    subprocess.run(["gcc", "-O2", *includes, "-o", str(exe), str(src), "-lpython3.11"], check=True)
    c = pod.run(
        "pyembed",
        ["/srv/pyembed", "/srv/app.py"],
        files={"pyembed": exe, "app.py": APP, "other.py": OTHER},
        env={"PYTHONPATH": "/srv", "PYTHONHOME": "/usr", "PYTHONDONTWRITEBYTECODE": "1"},
    )
    try:
        app = PyApp(c)
        probe = attach(client, py_probe(app, python_function="slow", mode="histogram"))
        assert "libpython3.11.so" in probe["target"]["binary"], probe["target"]
        app.batch()
        state = detach(client, probe["id"])
        assert state["hits"] == SLOW + FAST, state
    finally:
        c.stop(signal.SIGKILL)


# --- a generic USDT probe ------------------------------------------------------------


def test_usdt_probe_with_its_arguments(client: httpx.Client, py311: PyApp) -> None:
    probe = attach(
        client,
        py_probe(py311, usdt="python:function__return", args=["str", "str", "int32"]),
    )
    py311.batch()
    detach(client, probe["id"])
    events = events_of(client, probe["id"])
    mine = [e for e in events if e["arg0"] == "/srv/app.py" and e["arg1"] == "slow"]
    assert len(mine) == SLOW, events[:5]
    assert all(e["arg2"] > SLOW_DEF_LINE for e in mine)
    assert sum(e["arg1"] == "slow" and e["arg0"] == "/srv/other.py" for e in events) == FAST


def test_usdt_latency_of_an_entry_return_pair(client: httpx.Client, py311: PyApp) -> None:
    probe = attach(client, py_probe(py311, usdt="python:function__entry", mode="histogram"))
    py311.batch()
    state = detach(client, probe["id"])
    buckets = state["summary"]["histogram"]
    # Every Python call of the batch (and the polling loop's): the slow ones among them.
    assert sum(b["count"] for b in buckets if b["min"] == 1 << 25) >= SLOW, buckets


# --- refusals ---------------------------------------------------------------------------


def test_python_without_probes_is_409_pointing_to_stack_and_profiler(
    client: httpx.Client, pod: podsim.SimPod
) -> None:
    c = pod.run("py312", [PY312, "-c", "import time; time.sleep(600)"])
    try:
        r = client.post("/probes", json={"pid": c.pid, "python_function": "slow"})
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert "without USDT probes" in detail, detail
        assert f"/processes/{c.pid}/stack" in detail and "POST /profiles" in detail, detail
        r = client.post("/probes", json={"pid": c.pid, "usdt": "python:function__entry"})
        assert r.status_code == 409 and "/stack" in r.text, r.text
    finally:
        c.stop(signal.SIGKILL)


def test_a_process_that_is_not_python(client: httpx.Client, pod: podsim.SimPod) -> None:
    c = pod.run("native", ["sleep", "600"])
    try:
        r = client.post("/probes", json={"pid": c.pid, "python_function": "slow"})
        assert r.status_code == 409, r.text
        assert "not a CPython process" in r.json()["detail"]
        r = client.post("/probes", json={"pid": c.pid, "usdt": "python:function__entry"})
        assert r.status_code in (404, 409) and "usdt" in r.text, r.text
    finally:
        c.stop(signal.SIGKILL)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"usdt": 'python:function__entry"; exit(); //'}, 422, "usdt"),
        ({"usdt": "python"}, 422, "usdt"),
        ({"usdt": "python:function__entry\nBEGIN"}, 422, "usdt"),
        ({"python_function": 'slow" || 1 == 1 || "'}, 422, "python_function"),
        ({"python_function": "sl ow"}, 422, "python_function"),
        ({"python_function": "slow", "python_file": 'app.py"); exit(); //'}, 422, "python_file"),
        ({"python_file": "app.py", "function": "main"}, 422, "python_file"),
        ({"python_function": "slow", "function": "main"}, 422, "one of"),
        ({"python_function": "slow", "args": ["int"]}, 422, "args"),
        ({"python_function": "slow", "retval": True}, 422, "retval"),
        ({"python_function": "slow", "backend": "perf-probe"}, 422, "bpftrace"),
        ({"usdt": "python:audit", "mode": "histogram"}, 422, "latency is not defined"),
        ({"usdt": "python:gc__start", "args": ["int", "int"]}, 422, "1 argument"),
        ({"usdt": "python:gc__start", "mode": "histogram", "of": "arg3"}, 422, "arg3"),
        ({"usdt": "python:function__entri"}, 404, "function__entry"),
    ],
)
def test_bad_usdt_requests_say_which_field_and_why(
    client: httpx.Client, py311: PyApp, body: dict[str, Any], status: int, words: str
) -> None:
    r = client.post("/probes", json={"pid": py311.pid, **body})
    assert r.status_code == status, r.text
    assert words in r.text, r.text
