"""Java allocation profiles by Java method: async-profiler's ``alloc`` mode, loaded into
each JVM of an ``alloc`` profile through jattach, beside the C-allocator view bpftrace
gives of the JVM's native memory.

Owned here: where the library is (:func:`library`; settings ``async_profiler_lib``),
whether it can run (:func:`available`), what the plan says of it (:func:`describe`),
and one run per JVM (:func:`start`, :func:`finish`):

* the JVM must read the library in *its* mount namespace: it is copied into the JVM's
  /tmp through /proc/PID/root under a unique name (``tracecar-async-profiler-<token>.so``),
  loaded (``jattach PID load /tmp/... true start,event=alloc,...``), and removed at
  once (the JVM keeps its mapping). The JVM's /tmp is held open (a directory fd) for
  the whole profile, so what the JVM writes there can be read and removed even after it
  exits (its container's /tmp may be a tmpfs that goes with it);
* async-profiler can be loaded only once per JVM. A JVM that already has tracecar's copy
  (an earlier profile) is driven through that copy, by the path it was loaded from
  (the dynamic linker finds it by name; the file is gone). One that has a copy of its
  own (the user's) is left alone, and the profile says so. A JVM whose profiler is
  already running (another profile, or the user's session) gets no second session;
* at the end: ``stop``, then two dumps of the stopped profiler, ``collapsed`` by bytes
  (``total``) and by samples; a JVM that exits first writes the bytes view itself at its
  shutdown (the ``start`` command names the file), so what it sampled is kept. The start
  carries a ``timeout`` (duration + slack): an agent killed mid-profile leaves no
  profiler running. Every file is removed, on success, failure, cancel or exit; a
  leftover of a killed agent is swept by the next profile of that JVM;
* each command logs into a file of ours (read, then removed) rather than the JVM's
  stdout, which is the app's log; the last one logs to /dev/null so the JVM holds no
  file of ours open.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from agent import _proc, procfs
from agent.errors import NotFound
from agent.profiling import javalloc, memplan

_TIMEOUT_S = 30.0
IMAGE_LIB = Path("/opt/tracecar/lib/libasyncProfiler.so")
SETUP_LIB = Path("/var/cache/tracecar/async-profiler/libasyncProfiler.so")
_NO_ATTACH = b"-XX:+DisableAttachMechanism"

# Profiles in flight: their files in a JVM's /tmp are not leftovers.
_ACTIVE: set[str] = set()
# One start or finish at a time per JVM: two loads at once could map two copies of the
# library, and a profile starting while another stops would find the profiler running.
_LOCKS: weakref.WeakValueDictionary[tuple[int, int], asyncio.Lock] = weakref.WeakValueDictionary()


def library(configured: Path | None) -> Path:
    """The library to load: the setting, else the image's, else scripts/setup's cache."""
    if configured is not None:
        return configured
    return IMAGE_LIB if IMAGE_LIB.is_file() or not SETUP_LIB.is_file() else SETUP_LIB


def available(lib: Path) -> str | None:
    """Why Java methods cannot be sampled here (None: they can)."""
    if _proc.which("jattach") is None:
        return "jattach is not installed in the agent"
    if not lib.is_file() or not os.access(lib, os.R_OK):
        return (
            f"async-profiler's library is not at {lib} (the full image carries it; on a "
            "host scripts/setup fetches it; setting TRACECAR_AGENT_ASYNC_PROFILER_LIB)"
        )
    return None


def describe(
    mem: memplan.MemoryPlan, *, lib: Path, why_not: str | None, interval: int
) -> memplan.MemoryPlan:
    """The plan with what it does for its Java targets (alloc only)."""
    pids = sorted(t.pid for t in mem.targets if t.runtime == "java" and t.allocator)
    if mem.kind != "alloc" or not pids:
        return mem
    sampling = javalloc.sampling(interval)
    java = memplan.JavaMethods(
        pids=pids,
        available=why_not is None,
        reason="async-profiler's alloc mode loaded into each JVM through jattach (a copy "
        "of the library in the JVM's /tmp while it loads); Java stacks under [java]"
        if why_not is None
        else why_not,
        interval_bytes=interval,
        sampling=sampling,
        library=str(lib),
    )
    note = (
        f"Java targets ({', '.join(map(str, pids))}): {sampling}"
        if why_not is None
        else f"Java targets ({', '.join(map(str, pids))}): no Java methods ({why_not}); "
        "their native memory only"
    )
    return mem.model_copy(update={"java_methods": java, "notes": [*mem.notes, note]})


@dataclass(slots=True)
class Run:
    """One JVM's sampling in one profile."""

    pid: int
    names: javalloc.Names
    started: bool = False
    maybe_started: bool = False
    """A start command was cut short (a cancel): whether it took is unknown, so the end
    stops the profiler all the same."""
    reused: str = ""
    """The path tracecar's copy was loaded from by an earlier profile, when driven by it."""
    exited: bool = False
    message: str = ""
    stacks_bytes: dict[str, int] = field(default_factory=dict)
    stacks_count: dict[str, int] = field(default_factory=dict)
    loaded_from: str = ""
    tmp_fd: int | None = None


def _attach_disabled(pid: int) -> bool:
    """-XX:+DisableAttachMechanism (argument or JAVA_TOOL_OPTIONS): jattach would make
    the JVM print a thread dump into the app's stdout, and then give up."""
    for name in ("cmdline", "environ"):
        with contextlib.suppress(OSError):
            if _NO_ATTACH in (procfs.PROC / str(pid) / name).read_bytes():
                return True
    return False


def _loaded(pid: int) -> str | None:
    """The path of an async-profiler library the JVM has mapped, if any."""
    try:
        text = (procfs.PROC / str(pid) / "maps").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6:
            continue
        path = parts[5].removesuffix(" (deleted)")
        base = os.path.basename(path)
        if base.startswith(javalloc.PREFIX) or "asyncprofiler" in base.lower():
            return path
    return None


def _open_tmp(pid: int) -> int:
    """The JVM's /tmp, refused if it is a symbolic link: the agent (root, SYS_PTRACE)
    would follow it through the app's own /proc into another container's files."""
    return os.open(
        procfs.proc_root(pid) / "tmp", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    )


def _tmp_is_link(pid: int) -> bool:
    try:
        return (procfs.proc_root(pid) / "tmp").is_symlink()
    except (OSError, NotFound):
        return False


def _sweep(fd: int) -> None:
    """Files of ours that no profile in flight owns: an agent killed mid-profile."""
    for name in os.listdir(fd):
        token = javalloc.token_of(name)
        if token is not None and token not in _ACTIVE:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=fd)


def _copy_library(lib: Path, fd: int, name: str) -> None:
    data = lib.read_bytes()
    out = os.open(
        name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
        dir_fd=fd,
    )  # fmt: skip
    try:
        os.fchmod(out, 0o644)  # readable by the JVM's user, whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(out, view) :]
    finally:
        os.close(out)


def _read(fd: int | None, name: str, *, limit: int = 64 << 20) -> str | None:
    if fd is None:
        return None
    try:
        f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    except OSError:
        return None
    with os.fdopen(f, "rb") as stream:
        return stream.read(limit).decode("utf-8", "replace")


async def _command(
    run: Run, args: str, *, log: str | None, unknown_on_timeout: bool = False
) -> tuple[bool, str]:
    """``jattach PID load LIB true ARGS``: whether async-profiler did it, and what it said
    (its log, else jattach's words). ``unknown_on_timeout``: a jattach killed by its
    timeout raises (the JVM may still have done it)."""
    argv = ["jattach", str(run.pid), "load", run.loaded_from, "true", args]
    try:
        res = await _proc.run(argv, timeout=_TIMEOUT_S, check=False)
        said_jattach = (res.text.strip() or res.err.strip())[-500:]
        ok = res.returncode == 0
    except _proc.ToolTimeout:
        if unknown_on_timeout:
            raise
        said_jattach, ok = f"jattach did not finish within {_TIMEOUT_S:g} s", False
    except _proc.ProcError as e:
        said_jattach, ok = str(e), False
    said = ""
    if log is not None:  # a few lines in the JVM's /tmp (no await: a cancel cannot cut in)
        said = (_read(run.tmp_fd, log) or "").strip()
        _unlink(run.tmp_fd, log)
    return ok, (said or said_jattach)[-500:]


def _unlink(fd: int | None, name: str) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=fd)


def _lock(pid: int) -> asyncio.Lock:
    key = (id(asyncio.get_running_loop()), pid)
    lock = _LOCKS.get(key)
    if lock is None:
        lock = asyncio.Lock()
        _LOCKS[key] = lock
    return lock


def new_run(pid: int) -> Run:
    """One JVM's run, known to the caller before it starts: :func:`finish` it whatever
    happens to :func:`start` (a cancel in the middle too)."""
    run = Run(pid=pid, names=javalloc.Names(secrets.token_hex(8)))
    _ACTIVE.add(run.names.token)
    return run


async def start(run: Run, *, lib: Path, interval: int, timeout_s: float) -> None:
    """Start sampling one JVM's allocations (never raises but a cancel: a failure is the
    run's message)."""
    try:
        async with _lock(run.pid):
            await _start(run, lib=lib, interval=interval, timeout_s=timeout_s)
    except Exception as e:  # any failure is said in the profile, not raised
        run.message = run.message or f"async-profiler could not start: {e}"
    if not (run.started or run.maybe_started):
        _close(run)


async def _start(run: Run, *, lib: Path, interval: int, timeout_s: float) -> None:
    pid, n = run.pid, run.names
    # What follows until jattach runs are quick calls on /proc and the JVM's /tmp, made
    # without an await: a cancel cannot leave a descriptor or a half-written copy behind.
    if _attach_disabled(pid):
        run.message = "the JVM was started with -XX:+DisableAttachMechanism: it refuses jattach"
        return
    try:
        run.tmp_fd = _open_tmp(pid)
    except (OSError, NotFound) as e:
        link = getattr(e, "errno", 0) in (errno.ELOOP, errno.ENOTDIR) and _tmp_is_link(pid)
        why = "a symbolic link, not followed" if link else e
        run.message = f"the JVM's /tmp cannot be used ({why})"
        return
    _sweep(run.tmp_fd)
    loaded = _loaded(pid)
    copied = False
    if loaded is not None and not os.path.basename(loaded).startswith(javalloc.PREFIX):
        run.message = (
            f"the JVM already has its own async-profiler loaded ({loaded}): left alone (a "
            "second copy in one JVM would clash with it); profile its allocations with it "
            "(asprof -e alloc), or restart the JVM without it"
        )
        return
    if loaded is not None:
        run.loaded_from = run.reused = loaded
    else:
        try:
            _copy_library(lib, run.tmp_fd, n.library)
        except OSError as e:
            run.message = f"async-profiler's library could not be copied into the JVM's /tmp ({e})"
            return
        run.loaded_from, copied = f"/tmp/{n.library}", True
    args = javalloc.start_args(n, interval=interval, timeout_s=round(timeout_s))
    try:
        run.maybe_started = True
        ok, said = await _command(run, args, log=n.log("start"), unknown_on_timeout=True)
        if not ok and "JVM response code" not in said and "Profiler" not in said:
            # The JVM did not answer its first attach (a fresh JVM on a loaded node): once more.
            run.maybe_started = False
            await asyncio.sleep(1.0)
            run.maybe_started = True
            ok, said = await _command(run, args, log=n.log("start"), unknown_on_timeout=True)
        run.started, run.maybe_started = ok, False
    except _proc.ToolTimeout:
        # The JVM may start it after all: the end stops it and reads what it has.
        run.message = (
            f"jattach did not finish within {_TIMEOUT_S:g} s: whether async-profiler "
            "started is unknown (it is stopped at the end all the same)"
        )
        return
    finally:
        if copied:  # loaded (mapped) or not, the file has done its part
            _unlink(run.tmp_fd, n.library)
    if ok:
        return
    if "already started" in said:
        run.message = (
            "async-profiler is already running in this JVM (another profile of it, or a "
            "session of its own): one session at a time, so none in this profile"
        )
    else:
        run.message = f"async-profiler did not start: {said or 'no answer'}"


async def finish(run: Run, *, comm: str) -> None:
    """Stop one JVM's sampling, read both views, and remove every file (never raises)."""
    try:
        if run.started or run.maybe_started:
            # Under the JVM's lock: a profile starting meanwhile waits for this stop.
            async with _lock(run.pid):
                await _finish(run, comm=comm)
    except Exception as e:  # said in the profile
        run.message = run.message or f"async-profiler's samples could not be read: {e}"
    finally:
        _close(run)


async def _finish(run: Run, *, comm: str) -> None:
    n = run.names
    said = ""
    if procfs.running(run.pid):
        # A stop refused ("not active": its own timeout stopped it) still leaves the
        # samples to dump.
        await _command(run, javalloc.stop_args(n), log=n.log("stop"))
        _, said = await _command(
            run, javalloc.dump_args(n, weight="bytes"), log=n.log("dump-bytes")
        )
        await _command(run, javalloc.dump_args(n, weight="count", last=True), log=None)
    by_bytes = await asyncio.to_thread(_read, run.tmp_fd, n.bytes_out)
    by_count = await asyncio.to_thread(_read, run.tmp_fd, n.count_out)
    run.exited = not procfs.running(run.pid)
    if by_bytes is None:
        run.message = run.message or (
            "the JVM exited before its samples were dumped, without writing them"
            if run.exited
            else f"async-profiler's dump failed: {said or 'no file'}"
        )
        return
    run.stacks_bytes = javalloc.fold(javalloc.parse_collapsed(by_bytes), comm=comm)
    if by_count is not None:
        run.stacks_count = javalloc.fold(javalloc.parse_collapsed(by_count), comm=comm)
    elif run.exited:
        run.message = (
            "the JVM exited during the profile: its samples by bytes were written at its "
            "shutdown and are kept; the count view has none of its Java stacks"
        )


def _close(run: Run) -> None:
    """Every file of this run out of the JVM's /tmp, and its directory let go."""
    fd, run.tmp_fd = run.tmp_fd, None
    _ACTIVE.discard(run.names.token)
    if fd is None:
        return
    try:
        for name in os.listdir(fd):
            if javalloc.token_of(name) == run.names.token:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=fd)
    except OSError:
        pass
    finally:
        os.close(fd)
