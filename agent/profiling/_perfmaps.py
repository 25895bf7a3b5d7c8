"""JIT perf maps (``/tmp/perf-PID.map``): kept with a profile, handed to perf script.

A target's perf map lives in its own /tmp and goes when it exits; the service
copies it into the job directory (at most ``PERF_MAP_MAX_BYTES``), and
:func:`perf_maps_in_tmp` puts the copies where perf script looks for them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.jobs import Job

PERF_MAP_MAX_BYTES = 256 << 20
"""A JIT's perf map beyond this is cut at a line end: the app decides its size."""


def map_pids(job: Job[Any]) -> list[int]:
    """The pids whose perf maps the job directory holds a copy of."""
    pids = []
    for p in job.dir.glob("perf-*.map"):
        with contextlib.suppress(ValueError):
            pids.append(int(p.name[len("perf-") : -len(".map")]))
    return sorted(pids)


_placed: dict[Path, int] = {}
"""Perf maps this agent put in its own /tmp, with how many perf scripts use each."""


@contextlib.contextmanager
def perf_maps_in_tmp(job: Job[Any], pids: list[int]) -> Iterator[None]:
    """Put the job's copies of perf maps at /tmp/perf-PID.map for perf script.

    perf script resolves JIT frames from /tmp/perf-PID.map in the target's own
    /tmp while the target lives (it enters the target's mount namespace), and in
    the agent's own /tmp once it has exited (seen with perf 6.1 in the simulated
    pod). The agent's /tmp is private to its container, so a copy there only
    serves perf; it is removed when the last perf script using it is done.
    """
    mine: list[Path] = []
    try:
        for pid in pids:
            dest = Path("/tmp") / f"perf-{pid}.map"
            src = job.artifact(f"perf-{pid}.map")
            if pid == os.getpid() or not src.exists():
                continue
            if dest in _placed:
                _placed[dest] += 1
            elif dest.exists():
                continue  # not ours: leave it alone
            else:
                try:
                    shutil.copyfile(src, dest)
                except OSError:
                    continue
                _placed[dest] = 1
            mine.append(dest)
        yield
    finally:
        for dest in mine:
            _placed[dest] -= 1
            if _placed[dest] == 0:
                del _placed[dest]
                with contextlib.suppress(OSError):
                    dest.unlink()
