"""What several benches share (a bench helper: nothing under tests/ imports it).

* A real agent for the benches that measure it over HTTP (recorder, sinks, memory
  snapshot): ``python -m agent`` on this machine with its own port, data directory
  and token (or none), a client that waits for ``/healthz``, the agent stopped and
  waited for at the end; and the /proc figures they read of it (CPU time, RSS).
* The CPU-bound C app that times its own work (profile overhead, recorder, sinks).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent

WORK_C = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
volatile uint64_t sink;
__attribute__((noinline)) uint64_t step(volatile uint64_t n) {
    uint64_t s = 0;
    for (uint64_t i = 0; i < n; i++) s += (i * i) ^ (s >> 3);
    return s;
}
static double now(clockid_t c) {
    struct timespec t; clock_gettime(c, &t); return t.tv_sec + t.tv_nsec / 1e9;
}
int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 1000;
    char go; if (fread(&go, 1, 1, stdin) != 1) return 1;   /* start when told */
    double w = now(CLOCK_MONOTONIC), c = now(CLOCK_PROCESS_CPUTIME_ID);
    for (int k = 0; rounds == 0 || k < rounds; k++) sink += step(2000000);
    printf("%f %f\n", now(CLOCK_MONOTONIC) - w, now(CLOCK_PROCESS_CPUTIME_ID) - c);
    return 0;
}
"""
"""The app: ``work [ROUNDS]`` (1000 by default, 0: for ever) starts on a byte on stdin
and prints its wall and CPU seconds."""


def build_work(tmp: Path) -> Path:
    """:data:`WORK_C` built with frame pointers (perf's and bpftrace's stacks) in ``tmp``."""
    (tmp / "work.c").write_text(WORK_C)
    binary = tmp / "work"
    subprocess.run(
        ["gcc", "-O2", "-fno-omit-frame-pointer", "-o", str(binary), str(tmp / "work.c")],
        check=True,
    )
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_s(pid: int, *, children: bool = False) -> float:
    """utime + stime (and, with ``children``, those of its reaped children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def running_agent(
    data_dir: Path,
    *,
    token: str | None,
    env: Mapping[str, str] = {},
    timeout: float = 60,
    stop_wait: float = 30,
) -> Iterator[tuple[subprocess.Popen[bytes], httpx.Client]]:
    """The agent and a client for it, once ``/healthz`` answers (30 s at most).
    ``token``: the bearer token it requires (None: authentication off); ``env``: more
    of its settings. No session daemon: LTTng is no bench's subject here."""
    port = free_port()
    full_env = {
        **os.environ,
        "TRACECAR_AGENT_PORT": str(port),
        "TRACECAR_AGENT_DATA_DIR": str(data_dir),
        "TRACECAR_AGENT_LTTNG_START_SESSIOND": "false",
        "TRACECAR_AGENT_INSTANCE_ID": f"bench{port}",
        **(
            {"TRACECAR_AGENT_TOKEN": token}
            if token is not None
            else {"TRACECAR_AGENT_AUTH": "none"}
        ),
        **env,
    }
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent"], cwd=REPO, env=full_env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=timeout, headers=headers
        ) as client:
            deadline = time.monotonic() + 30
            while not _up(client):
                assert agent.poll() is None, f"the agent exited ({agent.returncode})"
                assert time.monotonic() < deadline, "the agent did not start"
                time.sleep(0.2)
            yield agent, client
    finally:
        agent.terminate()
        agent.wait(stop_wait)


def _up(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False
