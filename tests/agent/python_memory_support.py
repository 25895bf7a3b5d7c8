"""Helpers the Python-frames memory tests share (leak: tracemalloc; alloc: the sampler):
starting a workload app and waiting for it, one profile window over a run of its rounds,
and what is under a function in the folded stacks."""

from __future__ import annotations

import os
import signal
import time

import httpx

from tests import podsim
from tests.agent.support import wait_done


def ready(c: podsim.Container) -> podsim.Container:
    """``c`` once it printed "ready" (its rounds wait for SIGUSR1)."""
    deadline = time.monotonic() + 30
    while "ready" not in c.log():
        assert time.monotonic() < deadline and c.alive(), c.log()
        time.sleep(0.05)
    return c


def app(pod: podsim.SimPod, name: str, python: str, source: str, *flags: str) -> podsim.Container:
    """``source`` run as /srv/app.py by ``python`` (with ``flags``), ready."""
    return ready(pod.run(name, [python, *flags, "/srv/app.py"], files={"app.py": source.encode()}))


def attached(client: httpx.Client, job_id: str) -> None:
    """The profile's window is open in its targets (its metadata says ``attached``)."""
    deadline = time.monotonic() + 60
    while True:
        body = client.get(f"/profiles/{job_id}").json()
        if body["metadata"].get("attached"):
            return
        assert body["state"] in ("pending", "running"), str(body["error"])[-2500:]
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


def wait_log(c: podsim.Container, text: str) -> None:
    deadline = time.monotonic() + 240
    while text not in c.log():
        assert time.monotonic() < deadline and c.alive(), c.log()
        time.sleep(0.1)


def window(client: httpx.Client, c: podsim.Container, kind: str) -> tuple[str, dict[str, object]]:
    """A ``kind`` (leak or alloc) profile of ``c`` over one run of its rounds: started,
    attached, the rounds run (SIGUSR1, once the window is open), stopped early (what was
    seen is kept), succeeded."""
    r = client.post("/profiles", json={"pid": c.pid, "type": kind, "duration_s": 300})
    assert r.status_code == 202, r.text
    job_id: str = r.json()["id"]
    attached(client, job_id)
    os.kill(c.host_pid, signal.SIGUSR1)
    wait_log(c, "done")
    assert client.delete(f"/profiles/{job_id}").status_code == 202
    done: dict[str, object] = wait_done(client, job_id, timeout=180)
    assert done["state"] == "succeeded", str(done["error"])[-3000:]
    return job_id, done


def under(stacks: dict[str, int], function: str) -> int:
    """The weight of the stacks that pass through ``function`` (py-spy's spelling)."""
    return sum(
        n for s, n in stacks.items() if any(f.startswith(f"{function} (") for f in s.split(";"))
    )
