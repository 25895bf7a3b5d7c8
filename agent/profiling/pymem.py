"""Python frames in leak profiles (pure): the code the agent runs inside a CPython
target, what that code writes back, and the folded stacks made of it.

A leak profile of a CPython process asks the interpreter itself: at the window's start
the stdlib's ``tracemalloc`` is started in the target (its ``N`` innermost frames kept
per allocation); at the end a snapshot of the blocks still live is taken there and
written, as folded stacks weighted by bytes and by blocks, into a file of the target's
own /tmp, which the agent reads through /proc/PID/root and removes. Tracing started
there is then stopped: nothing stays in the process. The code is injected by
:mod:`agent.profiling._pymem` (pyinjector and hypno's injection library, over ptrace,
no gdb); this module only writes it and reads its results.

Owned here:

* :func:`start_code`, :func:`finish_code`, :func:`abort_code`: the Python source run in
  the target. Generated from validated values only (a token of 16 hex digits, a
  directory of :data:`DIRECTORIES`, integers): no request field reaches it. It runs in
  a namespace of its own (never the app's ``__main__``), catches everything (nothing
  is printed into the app's output) and writes its files atomically (a ``.part``
  then a rename). Its state between the two injections lives in one attribute of the
  ``tracemalloc`` module, removed at the end;
* the watchdog: a thread the start leaves parked on a lock until the end releases it,
  born with every signal blocked (the app's signals keep going to the app's threads).
  If the agent never comes back (it died, it was killed), the watchdog stops what was
  started and removes the files at the deadline. Parked in a futex, it is also a
  thread the end's injection can always enter at a safe point;
* :func:`parse_status`, :func:`parse_output`: the files the target writes;
* :func:`fold`: ``comm;[python];func (file:line);...`` stacks, outermost first, named
  from the sources (:class:`FunctionIndex`: the innermost ``def`` or ``class`` holding
  each line, by :mod:`ast`).

**What it measures.** tracemalloc sees every block allocated through Python's
allocators (objects, their buffers, and extensions that allocate with ``PyMem_*`` or
report with ``PyTraceMalloc_Track``), by the Python stack that allocated it, and only
while the block lives: it answers *leak* (what was allocated in the window and is
still live at its end), never *alloc* (what was allocated and freed is forgotten).
Started by the agent, it sees only the window's allocations. When the app already
traces, the agent leaves its tracing as it is and reports the growth per stack since
the window's start (a snapshot taken then), net of what was freed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ast

__all__ = [
    "DEFAULT_FRAMES",
    "DIRECTORIES",
    "MAX_STACKS",
    "SEES",
    "FunctionIndex",
    "Output",
    "Status",
    "abort_code",
    "check_dir",
    "check_token",
    "file_names",
    "finish_code",
    "fold",
    "parse_output",
    "parse_status",
    "program",
    "start_code",
]

DEFAULT_FRAMES = 16
"""Frames kept per allocation: deep enough for a web handler's stack, and the cost of
tracemalloc grows with it (bench/python_memory_bench.py)."""
MAX_STACKS = 20_000
"""Distinct stacks written by the target, the largest first; the rest are summed into
one ``[other stacks]`` frame (the file and its reading stay bounded)."""
MAX_OUTPUT_BYTES = 64 * 1024 * 1024
DIRECTORIES = ("/tmp", "/var/tmp", "/dev/shm")
"""Where the injected library and the result files go in the target (the first one
writable and not ``noexec``)."""
TOKEN = re.compile(r"[0-9a-f]{16}")
FILENAME = "<tracecar-pymem>"
"""The injected code's file name: its own allocations are filtered out by it."""
FORMAT = "tracecar-pymem 1"
SEES = (
    "leak: Python functions, from the interpreter's own tracemalloc started in the "
    "process for the window (no restart, nothing installed in it): what Python's "
    "allocators handed out in the window and is still live at its end; C libraries' "
    "own malloc is not in that view"
)


def file_names(token: str) -> dict[str, str]:
    """The files of one injection, by role (names inside the target's directory)."""
    check_token(token)
    stem = f"tracecar-pymem-{token}"
    return {"library": f"{stem}.so", "status": f"{stem}.status", "output": f"{stem}.folded"}


def check_token(token: str) -> None:
    if TOKEN.fullmatch(token) is None:
        raise ValueError(f"bad token {token!r}: 16 lowercase hex digits")


def check_dir(directory: str) -> None:
    if directory not in DIRECTORIES:
        raise ValueError(f"bad directory {directory!r}: one of {', '.join(DIRECTORIES)}")


# --- the code run in the target ----------------------------------------------------------
# Written for every CPython from 3.6 on (no walrus, no f-strings with "="): the target's
# version is whatever the app runs. The values come in as repr() of validated ones.

_COMMON = r"""
import os, sys, time, _thread
import tracemalloc

KEY = "_tracecar_" + TOKEN


def _write(path, text):
    part = path + ".part"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        data = text.encode("utf-8", "replace")
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)
    os.replace(part, path)


def _remove(path):
    for p in (path, path + ".part"):
        try:
            os.unlink(p)
        except OSError:
            pass


def _error(e):
    return ("%s: %s" % (type(e).__name__, e)).replace("\n", " ")[:500]


def _thread_without_signals(fn):
    # A thread of ours must never take the app's signals: a process-directed signal
    # handled on it leaves the main thread blocked in pause()/sleep() (CPython runs the
    # Python handler in the main thread only when that thread next wakes). Born with
    # every signal blocked (a new thread inherits its creator's mask), it never does.
    import signal
    if hasattr(signal, "valid_signals"):
        everything = signal.valid_signals()
    else:  # before 3.8: glibc keeps 32 and 33 for itself (adding them warns)
        everything = set(range(1, signal.NSIG)) - {32, 33}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, everything)
    try:
        _thread.start_new_thread(fn, ())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _watch(state, status, lines, undo, ready=None):
    # A thread of ours, parked on the lock until the end of the window (finish or abort
    # releases it); it first says the window is open (after ``ready``). Past the
    # deadline without the lock (the agent is gone), it undoes what was done (``undo``)
    # and removes the files.
    def watchdog():
        try:
            if ready is not None:
                ready()
            tid = getattr(_thread, "get_native_id", lambda: 0)()
            _write(status, "\n".join(lines + ["tid %d" % tid, "ok"]) + "\n")
        except BaseException as e:
            try:
                _write(status, FORMAT + "\nerror " + _error(e) + "\n")
            except BaseException:
                pass
        if state["lock"].acquire(True, DEADLINE_S):
            return
        try:
            undo()
            _remove(status)
            _remove(os.path.join(DIRECTORY, "tracecar-pymem-" + TOKEN + ".folded"))
        except BaseException:
            pass

    _thread_without_signals(watchdog)
"""

_START = r"""
def _start():
    status = os.path.join(DIRECTORY, "tracecar-pymem-" + TOKEN + ".status")
    state = {"lock": _thread.allocate_lock(), "started": False, "base": None}
    lines = [FORMAT, "python " + sys.version.split()[0], "cwd " + os.getcwd().replace("\n", "?")]
    try:
        if tracemalloc.is_tracing():
            lines += ["already 1", "frames %d" % tracemalloc.get_traceback_limit()]
        else:
            tracemalloc.start(FRAMES)
            state["started"] = True
            lines += ["already 0", "frames %d" % FRAMES]
        state["lock"].acquire()
        setattr(tracemalloc, KEY, state)
    except BaseException as e:
        _write(status, FORMAT + "\nerror " + _error(e) + "\n")
        return

    def ready():
        if not state["started"]:
            # The app traces already: its growth is measured from this snapshot.
            state["base"] = tracemalloc.take_snapshot()

    def undo():
        if getattr(tracemalloc, KEY, None) is state:
            delattr(tracemalloc, KEY)
            if state["started"]:
                tracemalloc.stop()

    _watch(state, status, lines, undo, ready)


# Whatever happens, nothing reaches the app's stderr (PyRun_SimpleString prints).
try:
    _start()
except BaseException:
    pass
"""

_FINISH = r"""
def _finish():
    out = os.path.join(DIRECTORY, "tracecar-pymem-" + TOKEN + ".folded")
    state = getattr(tracemalloc, KEY, None)
    if state is None:
        _write(out, FORMAT + "\nerror the window's state is gone from the process (its "
               "deadline passed: the agent came back too late)\n")
        return
    delattr(tracemalloc, KEY)

    def frames_of(tb):
        fr = list(tb)
        if sys.version_info < (3, 7):
            fr.reverse()  # most recent first before 3.7
        return ";".join(
            ("%s:%d" % (f.filename, f.lineno)).replace(";", ":").replace("\n", "?") for f in fr
        )

    def dump():
        try:
            if not tracemalloc.is_tracing():
                raise RuntimeError("tracemalloc was stopped during the window (by the app?)")
            snap = tracemalloc.take_snapshot()
            current, peak = tracemalloc.get_traced_memory()
            overhead = tracemalloc.get_tracemalloc_memory()
            if state["started"]:
                tracemalloc.stop()
            ours = [tracemalloc.Filter(False, FILENAME, all_frames=True),
                    tracemalloc.Filter(False, tracemalloc.__file__)]
            snap = snap.filter_traces(ours)
            if state["base"] is not None:
                rows = [(s.traceback, s.size_diff, s.count_diff)
                        for s in snap.compare_to(state["base"].filter_traces(ours), "traceback")
                        if s.size_diff > 0]
                rows.sort(key=lambda r: -r[1])
            else:
                rows = [(s.traceback, s.size, s.count) for s in snap.statistics("traceback")]
            state["base"] = None
            lines = [FORMAT, "started %d" % state["started"], "traced %d %d" % (current, peak),
                     "overhead %d" % overhead, "stacks %d" % len(rows)]
            for tb, size, count in rows[:MAX_STACKS]:
                lines.append("%s %d %d" % (frames_of(tb), size, max(count, 0)))
            rest = rows[MAX_STACKS:]
            if rest:
                lines.append("[other stacks] %d %d" % (sum(r[1] for r in rest),
                                                       sum(max(r[2], 0) for r in rest)))
            text = "\n".join(lines) + "\n"
        except BaseException as e:
            if state["started"] and tracemalloc.is_tracing():
                tracemalloc.stop()
            text = FORMAT + "\nerror " + _error(e) + "\n"
        try:
            if time.time() < GIVE_UP_AT:  # else the agent stopped waiting: leave nothing
                _write(out, text)
        except BaseException:
            pass

    _thread_without_signals(dump)
    state["lock"].release()


# Whatever happens, nothing reaches the app's stderr (PyRun_SimpleString prints).
try:
    _finish()
except BaseException:
    pass
"""

_ABORT = r"""
def _abort():
    state = getattr(tracemalloc, KEY, None)
    if state is None:
        return
    delattr(tracemalloc, KEY)
    state["base"] = None
    if state["started"] and tracemalloc.is_tracing():
        tracemalloc.stop()
    state["lock"].release()


# Whatever happens, nothing reaches the app's stderr (PyRun_SimpleString prints).
try:
    _abort()
except BaseException:
    pass
"""


def program(body: str, values: dict[str, object]) -> str:
    """The source injected: one ``exec`` of the whole code in a namespace of its own
    (the library runs its string in the app's ``__main__``: nothing must land there)."""
    head = "".join(f"{k} = {v!r}\n" for k, v in values.items())
    source = head + _COMMON + body
    compile(source, FILENAME, "exec")  # a generated syntax error is ours: fail here
    return (
        "__import__('builtins').exec(__import__('builtins').compile("
        f"{source!r}, {FILENAME!r}, 'exec'), {{'__name__': 'tracecar_pymem'}})"
    )


def start_code(*, token: str, directory: str, frames: int, deadline_s: float) -> str:
    """Start tracing (or note that the app traces already), park the watchdog."""
    check_token(token)
    check_dir(directory)
    if not 1 <= frames <= 1000:
        raise ValueError(f"frames {frames}: 1 to 1000")
    return program(
        _START,
        {
            "TOKEN": token,
            "DIRECTORY": directory,
            "FRAMES": int(frames),
            "DEADLINE_S": float(max(1.0, deadline_s)),
            "FORMAT": FORMAT,
        },
    )


def finish_code(*, token: str, directory: str, give_up_at: float) -> str:
    """Snapshot, stop what was started, write the stacks (in a thread of the target's:
    the injection itself returns at once)."""
    check_token(token)
    check_dir(directory)
    return program(
        _FINISH,
        {
            "TOKEN": token,
            "DIRECTORY": directory,
            "GIVE_UP_AT": float(give_up_at),
            "MAX_STACKS": MAX_STACKS,
            "FILENAME": FILENAME,
            "FORMAT": FORMAT,
        },
    )


def abort_code(*, token: str) -> str:
    """Stop what was started and wake the watchdog, writing nothing (a discarded or
    failed profile)."""
    check_token(token)
    return program(_ABORT, {"TOKEN": token, "FORMAT": FORMAT})


# --- what the target writes ---------------------------------------------------------------


@dataclass(slots=True)
class Status:
    ok: bool = False
    error: str = ""
    python: str = ""
    cwd: str = ""
    already: bool = False
    """The app traced already: left as it is, its growth since the start reported."""
    frames: int = 0
    tid: int = 0
    """The watchdog's thread (where the end's injection goes first)."""


def records(text: str, fmt: str) -> list[tuple[str, str, str]] | None:
    """``(key, rest, line)`` of each line of a file the injected code wrote, after its
    ``fmt`` header line; None when the header is not that (not the agent's file)."""
    lines = text.splitlines()
    if not lines or lines[0] != fmt:
        return None
    return [(*_key_rest(line), line) for line in lines[1:]]


def _key_rest(line: str) -> tuple[str, str]:
    key, _, rest = line.partition(" ")
    return key, rest


def parse_status(text: str) -> Status:
    st = Status()
    rows = records(text, FORMAT)
    if rows is None:
        st.error = "the status file is not the agent's"
        return st
    for key, value, _ in rows:
        if key == "error":
            st.error = value
        elif key == "ok":
            st.ok = not st.error
        elif key == "python":
            st.python = value[:40]
        elif key == "cwd":
            st.cwd = value
        elif key == "already":
            st.already = value == "1"
        elif key in ("frames", "tid") and value.isdigit():
            setattr(st, key, int(value))
    return st


@dataclass(slots=True)
class Output:
    error: str = ""
    started: bool = True
    traced_bytes: int = 0
    traced_peak_bytes: int = 0
    overhead_bytes: int = 0
    """tracemalloc's own memory in the target at the end (its traces, its tables)."""
    stack_count: int = 0
    stacks: dict[tuple[str, ...], tuple[int, int]] = field(default_factory=dict)
    """Frames (``file:line``, outermost first) -> (bytes, blocks)."""


_ROW = re.compile(r"(.*) (-?\d+) (-?\d+)")


def parse_output(text: str) -> Output:
    out = Output()
    rows = records(text, FORMAT)
    if rows is None:
        out.error = "the result file is not the agent's"
        return out
    for key, value, line in rows:
        nums = value.split()
        if key == "error":
            out.error = value
            continue
        if key == "started" and nums:
            out.started = nums[0] == "1"
            continue
        if key == "traced" and len(nums) == 2 and all(n.isdigit() for n in nums):
            out.traced_bytes, out.traced_peak_bytes = int(nums[0]), int(nums[1])
            continue
        if key in ("overhead", "stacks") and len(nums) == 1 and nums[0].isdigit():
            setattr(out, "overhead_bytes" if key == "overhead" else "stack_count", int(nums[0]))
            continue
        m = _ROW.fullmatch(line)
        if m is None or int(m[2]) <= 0:
            continue
        frames = tuple(m[1].split(";"))
        old = out.stacks.get(frames, (0, 0))
        out.stacks[frames] = (old[0] + int(m[2]), old[1] + max(int(m[3]), 0))
    return out


# --- naming frames ----------------------------------------------------------------------------


class FunctionIndex:
    """The innermost function (or class body) holding each line of one source file."""

    def __init__(self, source: str) -> None:
        import ast  # on first use: the idle agent does not carry the parser

        self._spans: list[tuple[int, int, str]] = []
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return
        self._walk(tree, "")

    def _walk(self, node: ast.AST, prefix: str) -> None:
        import ast

        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                end = getattr(child, "end_lineno", None) or child.lineno
                # Decorators run in the enclosing scope, but the def's own lines start at
                # its first decorator for the code object: count them in.
                start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                self._spans.append((start, end, name))
                inner = f"{name}.<locals>." if not isinstance(child, ast.ClassDef) else f"{name}."
                self._walk(child, inner)
            else:
                self._walk(child, prefix)

    def at(self, line: int) -> str:
        best: tuple[int, int, str] | None = None
        for span in self._spans:
            if span[0] <= line <= span[1] and (best is None or span[0] >= best[0]):
                best = span
        return best[2] if best is not None else "<module>"


SourceReader = Callable[[str], str | None]
"""The text of one of the target's source files (by the name its frames carry), or None."""


def _split_frame(frame: str) -> tuple[str, int | None]:
    name, _, line = frame.rpartition(":")
    if name and line.isdigit():
        return name, int(line)
    return frame, None


def fold(
    stacks: dict[tuple[str, ...], tuple[int, int]],
    *,
    comm: str,
    read_source: SourceReader,
) -> tuple[dict[str, int], dict[str, int]]:
    """Folded stacks by bytes and by blocks: ``comm;[python];func (file:line);...``,
    outermost first (py-spy's spelling of a frame, so CPU and memory graphs read alike).
    A frame whose source cannot be read (frozen modules, ``<string>``) keeps ``file:line``."""
    indexes: dict[str, FunctionIndex | None] = {}

    def name(frame: str) -> str:
        path, line = _split_frame(frame)
        if line is None:
            return frame
        if path not in indexes:
            text = read_source(path) if path.endswith((".py", ".pyw")) else None
            indexes[path] = FunctionIndex(text) if text is not None else None
        index = indexes[path]
        func = index.at(line) if index is not None else None
        return f"{func} ({path}:{line})" if func is not None else f"{path}:{line}"

    root = [comm.replace(" ", "_").replace(";", ":") or "python", "[python]"]
    by_bytes: dict[str, int] = {}
    by_count: dict[str, int] = {}
    for frames, (nbytes, count) in stacks.items():
        key = ";".join(root + [name(f).replace(";", ":") for f in frames if f])
        by_bytes[key] = by_bytes.get(key, 0) + nbytes
        if count > 0:
            by_count[key] = by_count.get(key, 0) + count
    return by_bytes, by_count
