"""Capture the stack tools' real outputs into tests/stacks/data (the parsers' unit tests).

    sudo .venv/bin/python -m tests.stacks.capture

Runs the workloads of :mod:`tests.stacks.workloads` in a simulated pod, each in
its own container, and each tool from another container (as the agent does),
with the argv :func:`agent.stacks._plan.plan` makes. Writes ``NAME.out`` (stdout),
``NAME.err`` (stderr) and ``meta.json`` (the pids, tool versions, the date).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from agent.procfs import Runtime
from agent.stacks._model import RequestedRuntime
from agent.stacks._plan import plan
from agent.stacks._service import find_tools
from tests import podsim
from tests.interpreters import PY312
from tests.stacks.support import tids, wait_ready
from tests.stacks.workloads import PY_BLOCKED, build_c, build_go, build_java

DATA = Path(__file__).parent / "data"


def main() -> None:
    build = Path(tempfile.mkdtemp(prefix="stacks-capture-"))
    tools = find_tools()
    with podsim.sim_pod() as pod:
        side = pod.run("sidecar", ["sleep", "infinity"])
        apps = {
            "py": pod.run("pyapp", [PY312, "/srv/wait.py"], files={"wait.py": PY_BLOCKED.encode()}),
            "c": pod.run("capp", ["/srv/blocked", "1"], files={"blocked": build_c(build / "b")}),
            "go": pod.run("goapp", ["/srv/goblocked"], files={"goblocked": build_go(build)}),
            "java": pod.run(
                "japp",
                ["java", "-cp", "/srv", "Sleeper"],
                files={"Sleeper.class": build_java(build)},
            ),
        }
        for c in apps.values():
            wait_ready(c)
        time.sleep(0.5)
        runs: list[tuple[str, str, Runtime, RequestedRuntime, bool, bool]] = [
            ("pyspy", "py", "python", "auto", False, False),
            ("pyspy-text", "py", "python", "auto", False, True),
            ("pyspy-native", "py", "python", "auto", True, False),
            ("gdb-python", "py", "python", "native", False, False),
            ("gdb-c", "c", "native", "auto", False, False),
            ("gdb-go", "go", "go", "auto", False, False),
            ("jattach", "java", "java", "auto", False, False),
            ("pyspy-on-c", "c", "python", "auto", False, False),  # py-spy on no interpreter
        ]
        for name, key, runtime, requested, native, text in runs:
            p = plan(
                apps[key].pid, runtime, requested=requested, native=native, text=text, tools=tools
            )
            argv = ["nsenter", "-t", str(side.host_pid), "-p", "-m", "--", *p.argv]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            (DATA / f"{name}.out").write_text(done.stdout)
            (DATA / f"{name}.err").write_text(done.stderr)

        def first_line(argv: list[str]) -> str:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            return (done.stdout or done.stderr).strip().splitlines()[0]

        versions = {
            "py-spy": first_line([str(tools["py-spy"]), "--version"]),
            "gdb": first_line(["gdb", "--version"]),
            "jattach": first_line(["jattach"]),
            "java": first_line(["java", "-version"]),
        }
        meta = {
            "pids": {k: c.pid for k, c in apps.items()},
            "tids": {k: sorted(tids(c)) for k, c in apps.items()},
            "versions": versions,
            "captured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (DATA / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
