"""Helpers the stacks tests share: waiting for an app to be ready, its threads."""

from __future__ import annotations

import time
from pathlib import Path

from tests import podsim


def wait_ready(c: podsim.Container, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while "ready" not in c.log():
        assert c.alive(), c.log()
        assert time.monotonic() < deadline, f"{c.name} never got ready: {c.log()}"
        time.sleep(0.05)


def tids(c: podsim.Container) -> set[int]:
    """The container's thread ids as the pod sees them."""
    return {podsim.ns_pid(int(t.name)) for t in Path(f"/proc/{c.host_pid}/task").iterdir()}
