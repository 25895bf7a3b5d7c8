"""Make perf record meet its own start race, for certain, without touching perf.

perf 6.1 with ``-p`` lists the target's threads, opens its events on each, reads
/proc/kallsyms (about 0.1 s), and only then writes each thread's COMM record from
/proc/TID/status. :class:`Racer` watches for a perf started by this test process
(the real binary, with the argv the agent gives it) holding both its event
descriptors and kallsyms open: that is the window. It stops perf there (SIGSTOP),
has the app (tests/agent/workloads.py's WORKERS_ON_DEMAND_C) end its four workers
and start four new ones, waits until both are done, and lets perf go on (SIGCONT):
the threads perf opened are gone, deterministically, on a busy machine or not.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

WORKERS = 4


def _open_files(pid: int) -> list[str]:
    out: list[str] = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return out


def _perfs_of(parent: int) -> list[int]:
    try:
        with open(f"/proc/{parent}/task/{parent}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        return []
    out = []
    for kid in kids:
        try:
            with open(f"/proc/{kid}/comm") as f:
                if f.read().strip() == "perf":
                    out.append(kid)
        except OSError:
            continue
    return out


def _until(what: str, pred: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"perf_start_race: timed out waiting for {what}")
        time.sleep(0.005)


def workers_of(app: int) -> int:
    return len(os.listdir(f"/proc/{app}/task")) - 1


def start_workers(app: int) -> None:
    os.kill(app, signal.SIGUSR2)
    _until("the workers", lambda: workers_of(app) == WORKERS)


def end_workers(app: int) -> None:
    os.kill(app, signal.SIGUSR1)
    _until("the workers' end", lambda: workers_of(app) == 0)


class Racer:
    """While entered, the first ``races`` perfs this process starts lose their threads
    inside perf's window; ``raced`` counts them."""

    def __init__(self, app: int, *, races: int) -> None:
        self.app = app
        self.races = races
        self.raced = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Racer:
        start_workers(self.app)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=60)

    def _watch(self) -> None:
        seen: set[int] = set()
        while not self._done.is_set() and self.raced < self.races:
            for perf in _perfs_of(os.getpid()):
                if perf in seen:
                    continue
                files = _open_files(perf)
                if "anon_inode:[perf_event]" in files and "/proc/kallsyms" in files:
                    seen.add(perf)
                    self._race(perf)
            time.sleep(0.001)

    def _race(self, perf: int) -> None:
        os.kill(perf, signal.SIGSTOP)
        try:
            end_workers(self.app)  # the workers perf opened end...
            start_workers(self.app)  # ...and new ones are there for perf's next start
            self.raced += 1
        finally:
            os.kill(perf, signal.SIGCONT)
