"""Python frames of leak and alloc profiles, executed: tracemalloc (leak) or tracecar's
sampling allocation tracer (alloc) started inside each CPython target for the window and
its stacks read back (the code: :mod:`agent.profiling.pymem`, :mod:`agent.profiling.pyalloc`).

Owned here:

* :func:`check`: whether a target can be entered (CPython with its C API exported, glibc
  and its dynamic loader, a directory of its own that is writable and not ``noexec``,
  ptrace not forbidden, the injector installed here, no other such profile on it), or
  why not (the plan says so and keeps the C-allocator view for it);
* :class:`Window`: every target's start, end (``keep``: snapshot and stacks; else
  abort) and files. Each injection writes a copy of hypno's injection library with our
  code patched in (its documented ``--- hypno code start ---`` slot) into the
  *target's* directory, through /proc/PID/root (exclusive create, no symlink
  followed), runs the injector child (:mod:`agent.profiling._pyinject`, through
  :mod:`agent._proc`: timeout, reaped) with the path as the target sees it, and
  removes the copy whatever happened. Result files are read through a descriptor of
  that directory, bounded, and removed; nothing is left in the target on success,
  failure or cancellation (and the watchdog the start parks there undoes everything
  by itself if the agent never comes back). For alloc, the sampler library
  (:mod:`agent.profiling._pysampler`) is copied there the same way before the start
  loads it, and removed once it is loaded (the mapping stays until the end unloads it).

hypno's own ``inject_py`` is not used: it writes the library into the *agent's* /tmp,
a path the target cannot see from another container.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import stat
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent import _proc, procfs, symbols
from agent.errors import Invalid, NotFound
from agent.profiling import _pyinject, _pysampler, pyalloc, pymem
from agent.profiling.memplan import MemoryTargetFacts, PythonFrames
from agent.profiling.planner import TargetFacts

START_WAIT_S = 10.0
"""How long the start looks for a thread waiting in a system call (a safe point)."""
END_WAIT_S = 10.0
STATUS_WAIT_S = 15.0
OUTPUT_WAIT_S = 120.0
"""How long the target may take to snapshot and write its stacks (millions of live
blocks take seconds)."""
CALL_SLACK_S = 30.0
"""The injector child's timeout beyond its search: the call itself (dlopen, our code,
dlclose) takes milliseconds."""
DEADLINE_SLACK_S = 300.0
"""The watchdog's deadline beyond the window's timeout."""
MAX_SOURCE_BYTES = 4 * 1024 * 1024
_CAPI = ("PyGILState_Ensure", "PyGILState_Release", "PyRun_SimpleStringFlags")
_CAPI_39 = ("PyThreadState_GetFrame", "PyFrame_GetBack", "PyFrame_GetCode")
"""What the alloc sampler walks frames with (CPython 3.9+)."""
_MAGIC = b"--- hypno code start ---"
_YAMA = Path("/proc/sys/kernel/yama/ptrace_scope")

_active: set[int] = set()
"""Targets with a window open (tracemalloc is one per process, so is the sampler: one
profile with Python frames at a time)."""


def _library() -> bytes | None:
    try:
        from hypno import api  # the injection library ships inside hypno's package
    except ImportError:
        return None
    try:
        return Path(api.INJECTION_LIB_PATH).read_bytes()
    except OSError:
        return None


def available() -> str | None:
    """Why Python frames cannot be had here (None: they can)."""
    try:
        import pyinjector.injector  # noqa: F401
    except ImportError:
        return "pyinjector is not installed in the agent"
    lib = _library()
    if lib is None:
        return "hypno's injection library is not installed in the agent"
    if lib.find(_MAGIC) < 1:
        return "hypno's injection library has no code slot (an unexpected hypno version)"
    return None


def available_alloc() -> str | None:
    """Why alloc profiles cannot have Python frames here (None: they can)."""
    why = available()
    if why is not None:
        return why
    lib, how = _pysampler.current()
    return how if lib is None else None


def capability(kind: str, *, interval: int = pyalloc.DEFAULT_INTERVAL_BYTES) -> dict[str, object]:
    """``/capabilities``' word on Python frames for one memory type."""
    if kind == "alloc":
        why = available_alloc()
        return {
            "python_frames": {
                "available": why is None,
                "reason": why
                or "tracecar's sampling allocation tracer loaded into each CPython target for "
                "the window (pyinjector over ptrace at a thread waiting in a system call, then "
                "ctypes; no restart, nothing installed in the target): "
                + pyalloc.sampling(interval),
                "versions": "CPython 3.9 or later, with its GIL, on glibc",
            }
        }
    why = available()
    return {
        "python_frames": {
            "available": why is None,
            "reason": why
            or "tracemalloc started inside each CPython target for the window (pyinjector "
            "over ptrace, at a thread waiting in a system call; no restart, nothing "
            "installed in the target)",
        }
    }


# --- planning ---------------------------------------------------------------------


def _euid(pid: int) -> int | None:
    try:
        text = (procfs.PROC / str(pid) / "status").read_text()
        return int(procfs.parse_status(text)["Uid"].split()[1])
    except (OSError, KeyError, IndexError, ValueError):
        return None


def _writable_dir(pid: int) -> tuple[str | None, str]:
    """The first of the target's directories it can load a library from and write its
    results into (as its own user), or why none."""
    said: list[str] = []
    uid = _euid(pid)
    for d in pymem.DIRECTORIES:
        try:
            host = procfs.resolve_in_root(pid, d)
            fs, st = os.statvfs(host), os.stat(host)
        except (NotFound, Invalid, OSError) as e:
            said.append(f"{d}: {getattr(e, 'strerror', None) or e}")
            continue
        if fs.f_flag & os.ST_RDONLY:
            said.append(f"{d}: read-only")
        elif fs.f_flag & os.ST_NOEXEC:
            said.append(f"{d}: noexec")
        elif not stat.S_ISDIR(st.st_mode):
            said.append(f"{d}: not a directory")
        elif not (uid == 0 or st.st_mode & 0o002 or (st.st_uid == uid and st.st_mode & 0o200)):
            said.append(f"{d}: not writable by the process's user ({uid})")
        else:
            return d, ""
    return None, "; ".join(said)


def check(fact: TargetFacts, kind: str = "leak") -> tuple[str | None, str]:
    """Where a leak (or alloc) profile's Python frames can be injected in ``fact``'s
    process (its directory), or None and why not."""
    if fact.runtime != "python":
        return None, ""
    why = available_alloc() if kind == "alloc" else available()
    if why is not None:
        return None, why
    pid = fact.pid
    if pid in _active:
        return None, "a profile with Python frames (leak or alloc) is already running on it"
    try:
        scope = _YAMA.read_text().strip()
    except OSError:
        scope = "0"
    if scope == "3":
        return None, "ptrace is disabled on this node (kernel.yama.ptrace_scope = 3)"
    try:
        objects = [m.path for m in symbols.maps(pid) if m.executable]
    except NotFound as e:
        return None, f"gone: {e}"
    bases = [os.path.basename(p) for p in dict.fromkeys(objects)]
    if any(b.startswith("ld-musl") for b in bases):
        return None, "a musl libc process: the injection library is built for glibc"
    if not any(b.startswith("ld-linux") or b.startswith("ld64.so") for b in bases):
        return None, "statically linked (no dynamic loader to load a library with)"
    capi = False
    for path in [fact.exe or "", *[p for p in objects if "libpython" in os.path.basename(p)]]:
        if not path:
            continue
        try:
            names = symbols.object_symbols(procfs.resolve_in_root(pid, path)).names()
        except (NotFound, Invalid, OSError):
            continue
        if all(n in names for n in _CAPI):
            capi = True
            break
    if not capi:
        return None, (
            "not CPython with its C API exported (no PyGILState_Ensure and "
            "PyRun_SimpleStringFlags in the executable or a libpython it maps)"
        )
    if kind == "alloc" and not all(n in names for n in _CAPI_39):
        return None, (
            "CPython older than 3.9 (no PyThreadState_GetFrame): the allocation sampler "
            "walks frames with the C API of 3.9 and later"
        )
    directory, said = _writable_dir(pid)
    if directory is None:
        return None, f"no directory of its own to load a library from ({said})"
    return directory, ""


def with_python(target: MemoryTargetFacts, fact: TargetFacts, kind: str) -> MemoryTargetFacts:
    """``target`` with its Python-frames facts (leak and alloc profiles of Python
    processes)."""
    if kind not in ("leak", "alloc") or fact.runtime != "python":
        return target
    directory, why = check(fact, kind)
    return replace(target, python_dir=directory, python_why=why)


# --- the target's files ---------------------------------------------------------------


def _dir_fd(pid: int, directory: str) -> int:
    return os.open(procfs.resolve_in_root(pid, directory), os.O_RDONLY | os.O_DIRECTORY)


def _write_library(pid: int, directory: str, name: str, code: str) -> None:
    lib = _library()
    if lib is None:
        raise RuntimeError("hypno's injection library is not installed in the agent")
    magic = lib.find(_MAGIC)
    room = int(lib[magic + len(_MAGIC) : lib.find(b"\0", magic)])
    data = code.encode()
    if len(data) > room:
        raise RuntimeError(f"the generated code ({len(data)} bytes) exceeds the library's {room}")
    # The slot ends right before the marker (hypno's layout): the code, NUL-terminated.
    at = magic - 1
    _write_file(pid, directory, name, lib[:at] + data + b"\0" + lib[at + len(data) + 1 :])


def _write_sampler(pid: int, directory: str, name: str) -> None:
    lib = _pysampler.current()[0]
    if lib is None:
        raise RuntimeError(_pysampler.current()[1])
    _write_file(pid, directory, name, lib.read_bytes())


def _write_file(pid: int, directory: str, name: str, patched: bytes) -> None:
    """A new file of the agent's in the target's directory, readable by its user."""
    dfd = _dir_fd(pid, directory)
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dfd)
        try:
            os.fchmod(fd, 0o644)  # readable by the target's user, whatever our umask
            view = memoryview(patched)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    finally:
        os.close(dfd)


def _remove(pid: int, directory: str, *names: str) -> None:
    try:
        dfd = _dir_fd(pid, directory)
    except (NotFound, Invalid, OSError):
        return  # the target is gone, and its files with its mount namespace
    try:
        for name in names:
            for n in (name, name + ".part"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(n, dir_fd=dfd)
    finally:
        os.close(dfd)


def _read(pid: int, directory: str, name: str, *, limit: int) -> str | None:
    """A regular file the target wrote (None: not there yet); never through a symlink."""
    try:
        dfd = _dir_fd(pid, directory)
    except (NotFound, Invalid, OSError):
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
    except OSError:
        return None
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        data = data[:limit]
        data = data[: data.rfind(b"\n") + 1]
    return data.decode("utf-8", "replace")


def _read_source(pid: int, cwd: str, path: str) -> str | None:
    full = path if path.startswith("/") else os.path.join(cwd or "/", path)
    try:
        host = procfs.resolve_in_root(pid, full)
        fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW)
    except (NotFound, Invalid, OSError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_SOURCE_BYTES + 1)
    finally:
        os.close(fd)
    return None if len(data) > MAX_SOURCE_BYTES else data.decode("utf-8", "replace")


# --- one target ---------------------------------------------------------------------------


@dataclass(slots=True)
class Target:
    pid: int
    comm: str
    directory: str
    kind: str = "leak"
    """leak: tracemalloc; alloc: the sampler."""
    interval: int = pyalloc.DEFAULT_INTERVAL_BYTES
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    status: pymem.Status | None = None
    output: pymem.Output | None = None
    sampled: pyalloc.Output | None = None
    """alloc: what the sampler wrote."""
    message: str = ""
    """Why there are no Python frames for it (empty: there are)."""
    entered: dict[str, Any] = field(default_factory=dict)
    """How the injections went in (thread, system call), for the metadata."""
    by_bytes: dict[str, int] = field(default_factory=dict)
    by_count: dict[str, int] = field(default_factory=dict)
    injected: bool = False
    """The start's code went in (tracing may run even if its status never came back)."""
    closed: bool = False

    @property
    def open(self) -> bool:
        return self.status is not None and self.status.ok and not self.closed


async def _inject(t: Target, code: str, *, wait_s: float, prefer: list[int]) -> dict[str, Any]:
    """One injection of ``code`` into ``t``: the library written, loaded, removed."""
    name = f"tracecar-pymem-{secrets.token_hex(8)}.so"
    await asyncio.to_thread(_write_library, t.pid, t.directory, name, code)
    try:
        res = await _proc.run(
            [
                sys.executable,
                "-I",
                str(Path(_pyinject.__file__)),
                str(t.pid),
                f"{t.directory}/{name}",
                f"{wait_s:g}",
                *[str(p) for p in prefer if p > 0],
            ],
            timeout=wait_s + CALL_SLACK_S,
            check=False,
        )
    finally:
        await asyncio.to_thread(_remove, t.pid, t.directory, name)
    try:
        said: dict[str, Any] = json.loads(res.text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        said = {"ok": False, "error": _proc.tool_message(res.err, res.returncode)}
    return said


async def _wait_file(t: Target, name: str, *, wait_s: float, limit: int) -> str | None:
    deadline = time.monotonic() + wait_s
    while True:
        text = await asyncio.to_thread(_read, t.pid, t.directory, name, limit=limit)
        if text is not None:
            return text
        if time.monotonic() > deadline or not procfs.pid_exists(t.pid):
            return None
        await asyncio.sleep(0.05)


async def _start(t: Target, *, frames: int, deadline_s: float) -> None:
    names = pymem.file_names(t.token)
    sampler = pyalloc.sampler_name(t.token)
    if t.kind == "alloc":
        code = pyalloc.start_code(
            token=t.token,
            directory=t.directory,
            frames=frames,
            interval=t.interval,
            deadline_s=deadline_s,
        )
    else:
        code = pymem.start_code(
            token=t.token, directory=t.directory, frames=frames, deadline_s=deadline_s
        )
    try:
        if t.kind == "alloc":
            try:
                await asyncio.to_thread(_write_sampler, t.pid, t.directory, sampler)
            except (OSError, RuntimeError, NotFound, Invalid) as e:
                t.message = f"the sampler could not be written into the target: {e}"
                return
        said = await _inject(t, code, wait_s=START_WAIT_S, prefer=[])
        if not said.get("ok"):
            t.message = str(said.get("error") or "the injection failed")
            return
        t.injected = True
        t.entered["start"] = {k: said[k] for k in ("tid", "syscall") if k in said}
        text = await _wait_file(t, names["status"], wait_s=STATUS_WAIT_S, limit=64 * 1024)
        if text is None:
            t.message = "the injected code wrote no status: it did not run (or the pid exited)"
            return
        st = pymem.parse_status(text)
        t.status = st
        if not st.ok:
            what = "the allocation sampler" if t.kind == "alloc" else "tracemalloc"
            t.message = f"{what} did not start: {st.error or 'no reason given'}"
    finally:
        # The sampler's copy goes too: loaded (or not), its file is needed no more.
        await asyncio.to_thread(_remove, t.pid, t.directory, names["status"], sampler)


async def _finish(t: Target, *, keep: bool) -> None:
    names = pymem.file_names(t.token)
    prefer = [t.status.tid] if t.status is not None else []
    try:
        if not procfs.pid_exists(t.pid):
            t.message = "the process exited during the window: its traces went with it"
            return
        alloc = t.kind == "alloc"
        if not keep:
            abort = (pyalloc if alloc else pymem).abort_code(token=t.token)
            said = await _inject(t, abort, wait_s=END_WAIT_S, prefer=prefer)
            if not said.get("ok"):
                what = "the allocation sampler" if alloc else "tracemalloc"
                t.message = f"{what} could not be stopped: {said.get('error')}"
            return
        if alloc:
            # The window ends with this first, short injection (the sampler stopped);
            # the next one writes the stacks (the finish stops it too if this failed).
            said = await _inject(
                t, pyalloc.stop_code(token=t.token), wait_s=END_WAIT_S, prefer=prefer
            )
            if said.get("ok"):
                t.entered["stop"] = {k: said[k] for k in ("tid", "syscall") if k in said}
        give_up_at = time.time() + OUTPUT_WAIT_S
        if alloc:
            code = pyalloc.finish_code(
                token=t.token, directory=t.directory, interval=t.interval, give_up_at=give_up_at
            )
        else:
            code = pymem.finish_code(token=t.token, directory=t.directory, give_up_at=give_up_at)
        said = await _inject(t, code, wait_s=END_WAIT_S, prefer=prefer)
        if not said.get("ok"):
            t.message = f"the end of the window could not be injected: {said.get('error')}"
            return
        t.entered["end"] = {k: said[k] for k in ("tid", "syscall") if k in said}
        text = await _wait_file(
            t, names["output"], wait_s=OUTPUT_WAIT_S + 5, limit=pymem.MAX_OUTPUT_BYTES
        )
        if text is None:
            t.message = f"no snapshot written within {OUTPUT_WAIT_S:g} s (or the pid exited)"
            return
        if alloc:
            sampled = pyalloc.parse_output(text)
            t.sampled = sampled
            if sampled.error:
                t.message = f"no samples: {sampled.error}"
                return
            st = t.status
            cwd = st.cwd if st is not None else "/"
            old = st is not None and st.python.split(".")[:2] in (["3", "9"], ["3", "10"])
            t.by_bytes, t.by_count = await asyncio.to_thread(
                pyalloc.fold,
                sampled.stacks,
                comm=t.comm,
                # Before 3.11 code objects carry no qualified name: the sources give it.
                read_source=(lambda path: _read_source(t.pid, cwd, path)) if old else None,
            )
            return
        out = pymem.parse_output(text)
        t.output = out
        if out.error:
            t.message = f"no snapshot: {out.error}"
            return
        cwd = t.status.cwd if t.status is not None else "/"
        t.by_bytes, t.by_count = await asyncio.to_thread(
            pymem.fold,
            out.stacks,
            comm=t.comm,
            read_source=lambda path: _read_source(t.pid, cwd, path),
        )
    finally:
        t.closed = True
        await asyncio.to_thread(_remove, t.pid, t.directory, names["status"], names["output"])


class Window:
    """The Python-frames part of one leak or alloc profile: every planned target's window."""

    def __init__(
        self,
        plan: PythonFrames | None,
        *,
        comms: dict[int, str],
        timeout_s: float,
        kind: str = "leak",
    ):
        self.frames = plan.frames if plan is not None else pymem.DEFAULT_FRAMES
        self.kind = kind
        interval = (
            plan.interval_bytes
            if plan is not None and plan.interval_bytes
            else pyalloc.DEFAULT_INTERVAL_BYTES
        )
        self.targets = [
            Target(
                pid=p.pid,
                comm=comms.get(p.pid, "python"),
                directory=p.directory,
                kind=kind,
                interval=interval,
            )
            for p in (plan.targets if plan is not None else [])
        ]
        self.deadline_s = timeout_s + DEADLINE_SLACK_S

    @property
    def planned(self) -> bool:
        return bool(self.targets)

    @property
    def opened(self) -> list[Target]:
        return [t for t in self.targets if t.open]

    async def start(self) -> None:
        for t in self.targets:
            _active.add(t.pid)
        try:
            await asyncio.gather(
                *(_start(t, frames=self.frames, deadline_s=self.deadline_s) for t in self.targets)
            )
        except BaseException:
            await self.end(keep=False)
            raise

    async def end(self, *, keep: bool) -> None:
        # A target whose start went in but never said so (its status did not come back)
        # may trace all the same: it is aborted, never left to its watchdog's deadline.
        started = [t for t in self.targets if t.injected and not t.closed]
        try:
            await asyncio.gather(*(_finish(t, keep=keep and t.open) for t in started))
        finally:
            for t in self.targets:
                _active.discard(t.pid)

    def failure(self) -> str:
        """Every target's reason, for a profile that got nothing."""
        return "; ".join(f"pid {t.pid}: {t.message}" for t in self.targets if t.message)

    def stacks(self) -> tuple[dict[str, int], dict[str, int]]:
        by_bytes: dict[str, int] = {}
        by_count: dict[str, int] = {}
        for t in self.targets:
            for k, v in t.by_bytes.items():
                by_bytes[k] = by_bytes.get(k, 0) + v
            for k, v in t.by_count.items():
                by_count[k] = by_count.get(k, 0) + v
        return by_bytes, by_count

    def notes(self) -> list[str]:
        out: list[str] = []
        for t in self.targets:
            if t.message:
                out.append(f"pid {t.pid} ({t.comm}): no Python frames: {t.message}")
                continue
            if t.kind == "alloc":
                out.extend(_alloc_notes(t))
                continue
            st, o = t.status, t.output
            if st is None or o is None:
                continue
            nbytes, blocks = sum(t.by_bytes.values()), sum(t.by_count.values())
            if st.already:
                out.append(
                    f"pid {t.pid} ({t.comm}): the app traces with tracemalloc itself ({st.frames} "
                    "frames): left running; its growth per stack since the window started, net "
                    f"of frees, under [python]: {nbytes} bytes"
                )
            else:
                out.append(
                    f"pid {t.pid} ({t.comm}): Python {st.python}, tracemalloc ({st.frames} frames) "
                    f"for the window, then stopped: {nbytes} bytes in {blocks} blocks allocated "
                    "in the window and live at its end, under [python]; tracemalloc's own "
                    f"memory in the process at the end: {o.overhead_bytes} bytes"
                )
        return out

    def summary(self) -> dict[str, object]:
        if self.kind == "alloc":
            return {str(t.pid): _alloc_summary(t) for t in self.targets}
        return {
            str(t.pid): {
                "python": t.status.python if t.status else None,
                "frames": t.status.frames if t.status else None,
                "app_traced_already": t.status.already if t.status else None,
                "outstanding_bytes": sum(t.by_bytes.values()),
                "outstanding_blocks": sum(t.by_count.values()),
                "stacks": t.output.stack_count if t.output else 0,
                "tracemalloc_overhead_bytes": t.output.overhead_bytes if t.output else None,
                "traced_bytes_at_end": t.output.traced_bytes if t.output else None,
                "traced_peak_bytes": t.output.traced_peak_bytes if t.output else None,
                "entered": t.entered,
                "error": t.message or None,
            }
            for t in self.targets
        }


def _alloc_notes(t: Target) -> list[str]:
    st, o = t.status, t.sampled
    if st is None or o is None:
        return []
    nbytes, count = sum(t.by_bytes.values()), sum(t.by_count.values())
    out = [
        f"pid {t.pid} ({t.comm}): Python {st.python}, tracecar's allocation sampler "
        f"({st.frames} frames) for the window, then unloaded: {o.calls} allocations of "
        f"{o.bytes} bytes through Python's allocators (exact); {o.samples} samples, one per "
        f"{o.interval} bytes on average, estimate {nbytes} bytes in {count} allocations "
        "under [python]"
    ]
    if o.dropped:
        out.append(
            f"pid {t.pid} ({t.comm}): {o.dropped} samples dropped (more than "
            f"{pyalloc.MAX_STACKS} distinct stacks)"
        )
    if o.replaced:
        out.append(
            f"pid {t.pid} ({t.comm}): Python's allocators were replaced over the sampler's "
            "during the window (tracemalloc started or stopped?): its hooks stay as pure "
            "pass-through and its library stays loaded, since removing them would break the "
            "newer ones"
        )
    return out


def _alloc_summary(t: Target) -> dict[str, object]:
    o = t.sampled
    return {
        "python": t.status.python if t.status else None,
        "frames": t.status.frames if t.status else None,
        "interval_bytes": t.interval,
        "allocations_exact": o.calls if o else None,
        "bytes_exact": o.bytes if o else None,
        "samples": o.samples if o else 0,
        "dropped_samples": o.dropped if o else 0,
        "truncated_stacks": o.truncated if o else 0,
        "bytes_estimated": sum(t.by_bytes.values()),
        "allocations_estimated": sum(t.by_count.values()),
        "stacks": o.stack_count if o else 0,
        "left_loaded": o.replaced if o else False,
        "entered": t.entered,
        "error": t.message or None,
    }


async def wait_window(duration_s: float, stop: asyncio.Event) -> bool:
    """A window without bpftrace: its duration, or until stopped (True: stopped early)."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=duration_s)
    except TimeoutError:
        return False
    return True
