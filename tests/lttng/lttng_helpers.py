"""Helpers of the LTTng tests: build the test apps, run them in the pod, wait for them."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests import podsim

APPS = Path(__file__).resolve().parent / "apps"


def build_c_app(dest_dir: Path) -> Path:
    """gcc + liblttng-ust-dev: the C app with its own tracepoint provider."""
    out = dest_dir / "tcapp"
    subprocess.run(
        [
            "gcc",
            "-O2",
            "-I",
            str(APPS),
            "-o",
            str(out),
            str(APPS / "tcapp.c"),
            "-llttng-ust",
            "-ldl",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return out


JUL_CP = ["/usr/share/java/lttng-ust-agent-jul.jar", "/usr/share/java/lttng-ust-agent-common.jar"]


def build_jul_app(dest_dir: Path) -> Path:
    """javac: the JUL app logging through LTTng's Java agent."""
    subprocess.run(
        ["javac", "-cp", ":".join(JUL_CP), "-d", str(dest_dir), str(APPS / "JulApp.java")],
        check=True,
        capture_output=True,
        text=True,
    )
    return dest_dir / "JulApp.class"


def run_jul_app(pod: podsim.SimPod, name: str, cls: Path, n: int) -> podsim.Container:
    argv = ["java", "-Djava.library.path=/usr/lib/x86_64-linux-gnu/jni"]
    argv += ["-cp", ":".join(["/srv", *JUL_CP]), "JulApp", str(n)]
    c = pod.run(name, argv, files={"JulApp.class": cls})
    wait_for(lambda: "ready" in c.log(), 30, f"{name} ready")
    return c


def go(c: podsim.Container, batch: int, timeout: float = 30) -> None:
    """The JUL app's trigger: a file in its own /tmp (Java has no handy SIGUSR1)."""
    Path(f"/proc/{c.host_pid}/root/tmp/go-{batch}").write_text("")
    wait_for(
        lambda: Path(f"/proc/{c.host_pid}/root/tmp/done-{batch}").exists(),
        timeout,
        f"{c.name} batch {batch}",
    )


def wait_for(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def run_c_app(
    pod: podsim.SimPod, name: str, binary: Path, n: int, rate: float = 0, *, cpu: int | None = None
) -> podsim.Container:
    """The C app, emitting ``n`` events per batch; on one CPU only if ``cpu`` is given."""
    argv = ["/srv/tcapp", str(n), str(rate)]
    if cpu is not None:
        argv = [shutil.which("taskset") or "taskset", "-c", str(cpu), *argv]
    c = pod.run(name, argv, files={"tcapp": binary})
    wait_for(lambda: "ready" in c.log(), 10, f"{name} ready")
    return c


def run_py_app(pod: podsim.SimPod, name: str, n: int) -> podsim.Container:
    c = pod.run(
        name, ["/usr/bin/python3", "/srv/pyapp.py", str(n)], files={"pyapp.py": APPS / "pyapp.py"}
    )
    wait_for(lambda: "ready" in c.log(), 20, f"{name} ready")
    return c


def trigger(c: podsim.Container, batch: int, timeout: float = 30) -> str:
    """One batch of events; returns the app's done file (count and seconds)."""
    os.kill(c.host_pid, signal.SIGUSR1)
    path = f"/tmp/done-{batch}"

    def done() -> str | None:
        try:
            return c.read(path).decode()
        except FileNotFoundError:
            return None

    return str(wait_for(done, timeout, f"{c.name} batch {batch}"))


def daemon_sessions(agent: podsim.AgentHandle) -> list[str]:
    """Session names in the pod's session daemon, asked with lttng in the agent's namespace."""
    out = subprocess.run(
        ["nsenter", "-t", str(agent.container.host_pid), "-m", "lttng", "--mi", "xml", "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr

    return re.findall(r"<session><name>([^<]+)</name>", out.stdout)


def pod_processes(pod: podsim.SimPod, prefix: str) -> list[tuple[int, str]]:
    """Host pids and comms of live processes in the pod whose comm starts with ``prefix``."""
    target = os.readlink(f"/proc/{pod.infra_pid}/ns/pid")
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if os.readlink(p / "ns" / "pid") != target:
                continue
            comm = (p / "comm").read_text().strip()
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":
            # A zombie is already dead: podsim's pid 1 (`sleep`) never reaps orphans,
            # unlike a real pod's pause container.
            continue
        if comm.startswith(prefix):
            found.append((int(p.name), comm))
    return found


def ndjson(resp: httpx.Response) -> list[dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    return [json.loads(line) for line in resp.text.splitlines() if line]
