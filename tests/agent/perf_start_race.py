"""Run perf record so that it meets its own start race, for certain (a script the tests
run as perf's command; see tests/agent/test_perf_start_race_integration.py).

    perf_start_race.py COUNT_FILE RACE_CALLS APP_PID perf record ...

The first RACE_CALLS calls race: the app (tests/agent/workloads.py's
WORKERS_ON_DEMAND_C) starts its four workers and this waits until they are there;
perf runs under strace, which delays each of perf's opens of /proc/kallsyms by 1 s.
perf reads kallsyms once more after opening its events and before writing each
thread's COMM record: once perf's event descriptors stop growing, the workers are
told to end (SIGUSR1), and they are gone before perf comes to them. Later calls run
perf as it is (the workers are gone: nothing to race with). The exit status is
perf's own (strace passes it through).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

DELAY_US = 1_000_000
WORKERS = 4


def open_files(pid: int) -> list[str]:
    """What each of ``pid``'s descriptors points at (gone ones left out)."""
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


def in_the_window(pid: int) -> bool:
    """perf holds its events open and /proc/kallsyms too: its last kallsyms read,
    after opening the events and before writing the threads' COMM records. (It reads
    kallsyms three times before opening any event, and closes it after each read.)"""
    files = open_files(pid)
    return "anon_inode:[perf_event]" in files and "/proc/kallsyms" in files


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def perf_under(pid: int) -> int | None:
    for child in children(pid):
        try:
            with open(f"/proc/{child}/comm") as f:
                if f.read().strip() == "perf":
                    return child
        except OSError:
            continue
    return None


def until(what: str, pred: Callable[[], object], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            sys.exit(f"perf_start_race: timed out waiting for {what}")
        time.sleep(0.02)


def race(app: int, perf: list[str]) -> int:
    os.kill(app, signal.SIGUSR2)
    until("the workers", lambda: len(os.listdir(f"/proc/{app}/task")) == 1 + WORKERS)
    slow_kallsyms = ["-P", "/proc/kallsyms", "-e", "trace=openat"]
    slow_kallsyms += ["-e", f"inject=openat:delay_exit={DELAY_US}"]
    strace = subprocess.Popen(["strace", "-f", "-o", "/dev/null", *slow_kallsyms, *perf])
    # strace's first children are its own probes of ptrace: wait for the one that is perf.
    until("perf", lambda: perf_under(strace.pid) or strace.poll() is not None)
    perf_pid = perf_under(strace.pid) or 0
    while strace.poll() is None:
        if in_the_window(perf_pid):
            os.kill(app, signal.SIGUSR1)  # the workers end while perf reads (1 s)
            break
        time.sleep(0.01)
    return strace.wait(timeout=300)


def main() -> int:
    count_file, race_calls, app, *perf = sys.argv[1:]
    calls = 0
    if os.path.exists(count_file):
        with open(count_file) as f:
            calls = int(f.read())
    with open(count_file, "w") as f:
        f.write(str(calls + 1))
    if calls < int(race_calls):
        return race(int(app), perf)
    os.execvp(perf[0], perf)
    return 127  # not reached: exec replaces this process


if __name__ == "__main__":
    sys.exit(main())
