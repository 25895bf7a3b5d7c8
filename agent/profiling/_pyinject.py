"""The injector: a child process that loads one library into a live process at a safe
point, with pyinjector (ptrace, no debugger), and unloads it.

Run by :mod:`agent.profiling._pymem` through :mod:`agent._proc` (a timeout, always
reaped) as a script, ``python -I _pyinject.py PID LIBRARY WAIT_S [TID...]``, so it
loads no agent package: the standard library and pyinjector only. It prints one JSON
object (``ok``, ``tid``, ``syscall``, or ``error`` and ``code``).

**Where it enters.** pyinjector stops one thread with ``PTRACE_ATTACH`` and calls
``dlopen`` on it, wherever that thread was; the library's constructor then takes the
GIL and runs its Python code on that thread. Stopped at an arbitrary instruction
(inside malloc, or in the middle of the interpreter's own bookkeeping), that would
re-enter code that is not reentrant. So a thread is entered only when it is stopped in
a system call that *waits* (:data:`WAITS`: a sleep, a poll, a futex such as the GIL's
or a lock's, a blocking read of a socket, pipe or terminal): there it holds no
allocator lock, and in CPython it has released the GIL at a call boundary (or, in a C
extension that blocks holding it, sits between two of the interpreter's steps, as a
signal handler's code would). Threads are tried in the order given (the
watchdog the start left parked, for the end), then the main thread, then the others,
for ``WAIT_S`` seconds; a process whose threads never wait (one thread computing
without pause) is refused with a message, not entered.

``LIBRARY`` is the path *as the target sees it* (pyinjector writes it into the target
and ``dlopen`` resolves it there, in the target's mount namespace); it must name one of
the agent's own files (:data:`_LIBRARY`).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import sys
import time

# System calls a thread waits in (by number, per architecture): see the docstring.
WAITS: dict[str, dict[int, str]] = {
    "x86_64": {
        0: "read",
        7: "poll",
        23: "select",
        34: "pause",
        35: "nanosleep",
        43: "accept",
        45: "recvfrom",
        47: "recvmsg",
        61: "wait4",
        128: "rt_sigtimedwait",
        130: "rt_sigsuspend",
        202: "futex",
        230: "clock_nanosleep",
        232: "epoll_wait",
        247: "waitid",
        270: "pselect6",
        271: "ppoll",
        281: "epoll_pwait",
        288: "accept4",
        441: "epoll_pwait2",
        449: "futex_waitv",
    },
    "aarch64": {
        22: "epoll_pwait",
        63: "read",
        72: "pselect6",
        73: "ppoll",
        95: "waitid",
        98: "futex",
        101: "nanosleep",
        115: "clock_nanosleep",
        133: "rt_sigsuspend",
        137: "rt_sigtimedwait",
        202: "accept",
        207: "recvfrom",
        212: "recvmsg",
        242: "accept4",
        260: "wait4",
        441: "epoll_pwait2",
        449: "futex_waitv",
    },
}
_LIBRARY = re.compile(r"/(?:tmp|var/tmp|dev/shm)/tracecar-pymem-[0-9a-f]{16}\.so")

# Exit codes (the JSON says the same in words).
OK, BAD_ARGS, NO_SAFE_POINT, PTRACE, INJECT, GONE = 0, 2, 3, 4, 5, 6


def _args(e: BaseException) -> tuple[object, object, object]:
    """pyinjector's InjectorException carries (function, return value, message)."""
    a = [*e.args, None, None, None]
    return a[0], a[1], a[2]


def _say(code: int, **fields: object) -> int:
    print(json.dumps({"ok": code == OK, "code": code, **fields}), flush=True)
    return code


def syscall_of(pid: int, tid: int) -> int | None:
    """The system call ``tid`` is in, or None (running, in user code, unreadable). A
    ``read`` counts only on a socket, a pipe or a terminal: a read of a regular file may
    be the dynamic loader's, in the middle of a ``dlopen`` (``-1``: not a wait)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/syscall") as f:
            fields = f.read().split()
    except OSError:
        return None
    if not fields or not fields[0].isdigit():
        return None
    nr = int(fields[0])
    if WAITS.get(platform.machine(), {}).get(nr) == "read" and len(fields) > 1:
        try:
            what = os.readlink(f"/proc/{pid}/fd/{int(fields[1], 16)}")
        except (OSError, ValueError):
            return -1
        if not what.startswith(("socket:", "pipe:", "/dev/pts/", "/dev/tty", "anon_inode:")):
            return -1
    return nr


def _threads(pid: int, prefer: list[int]) -> list[int]:
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if t.isdigit())
    except OSError:
        return []
    rest = [pid] + [t for t in tids if t != pid]
    return [t for t in prefer if t in tids] + [t for t in rest if t in tids and t not in prefer]


def main(argv: list[str]) -> int:
    if len(argv) < 3 or not argv[0].isdigit() or _LIBRARY.fullmatch(argv[1]) is None:
        return _say(BAD_ARGS, error="usage: PID LIBRARY WAIT_S [TID...] (an agent library)")
    pid, library = int(argv[0]), argv[1]
    try:
        wait_s = float(argv[2])
        prefer = [int(t) for t in argv[3:]]
    except ValueError:
        return _say(BAD_ARGS, error="WAIT_S is seconds, TIDs are integers")
    waits = WAITS.get(platform.machine())
    if waits is None:
        return _say(
            INJECT, error=f"injection is supported on x86-64 and arm64, not {platform.machine()}"
        )
    from pyinjector.injector import Injector, InjectorException

    deadline = time.monotonic() + wait_s
    seen: dict[str, int] = {}
    while True:
        tids = _threads(pid, prefer)
        if not tids:
            return _say(GONE, error=f"pid {pid} is gone")
        for tid in tids:
            if syscall_of(pid, tid) not in waits:
                continue  # running or in user code now: not even worth stopping
            injector = Injector()
            try:
                injector.attach(tid)
            except InjectorException as e:
                func, rc, said = _args(e)
                if rc == -8 or "EPERM" in str(said) or "not permitted" in str(said):
                    return _say(
                        PTRACE,
                        error=f"ptrace refused attaching to pid {pid} ({said}): the agent needs "
                        "CAP_SYS_PTRACE and a ptrace scope that allows it "
                        "(/proc/sys/kernel/yama/ptrace_scope below 3)",
                    )
                if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                    continue  # the thread ended meanwhile
                return _say(INJECT, error=f"attaching failed: {func}: {said or rc}")
            try:
                nr = syscall_of(pid, tid)
                if nr not in waits:
                    seen["user code" if nr is None else f"syscall {nr}"] = 1
                    continue
                try:
                    handle = injector.inject(library.encode())
                except InjectorException as e:
                    said = _args(e)[2]
                    return _say(INJECT, error=f"loading the library failed: {said}", tid=tid)
                try:
                    injector.uninject(handle)
                except InjectorException as e:
                    said = _args(e)[2]
                    return _say(OK, tid=tid, syscall=waits[nr], warning=f"not unloaded: {said}")
                return _say(OK, tid=tid, syscall=waits[nr])
            finally:
                with contextlib.suppress(InjectorException):
                    injector.detach()
        if time.monotonic() >= deadline:
            return _say(
                NO_SAFE_POINT,
                error=f"no thread of pid {pid} waited in a system call within {wait_s:g} s "
                f"({len(tids)} threads, all computing): the code is only run where a thread "
                "waits (a sleep, a lock, I/O), never in the middle of the interpreter's work",
            )
        time.sleep(0.01)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
