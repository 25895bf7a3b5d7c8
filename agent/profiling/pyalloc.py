"""Python frames in alloc profiles (pure): the code the agent runs inside a CPython
target to drive the sampling allocation tracer (``pyalloc_sampler.c``), what that code
writes back, and the folded stacks made of it.

An alloc profile asks *where a Python app allocates*, counting what it frees again:
tracemalloc cannot say it (it forgets freed blocks), so the agent's own sampler is
loaded into the target for the window. At the start, code injected the way leak
profiles' is (:mod:`agent.profiling._pymem`: pyinjector, hypno's library) loads a copy
of the sampler the agent wrote into the target's own /tmp with ``ctypes.PyDLL`` (its
calls keep the GIL, which ``PyMem_SetAllocator`` needs) and starts it: Python's MEM and
OBJ allocators are wrapped, one allocation per ``interval`` bytes on average is sampled
(exponential intervals, weighted so the totals are unbiased) with its Python stack. At
the end a one-line injection stops the sampler (the original allocators back), and
the next reads its stacks, unloads the library and writes the stacks as folded lines
into a file the agent reads through /proc/PID/root and removes: nothing stays in the
process.

Owned here: :func:`start_code`, :func:`finish_code`, :func:`abort_code` (generated from
validated values only, sharing :mod:`agent.profiling.pymem`'s helpers, watchdog and
rules: a namespace of their own, nothing printed, files written atomically);
:func:`parse_output` and :func:`fold`; the sampling said in words (:func:`sampling`).

Its state between the injections is one attribute of ``sys`` (:data:`ATTR`), the same
name for every profile: a second agent (or profile) finding it refuses to start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from agent.profiling import pymem

__all__ = [
    "ATTR",
    "DEFAULT_INTERVAL_BYTES",
    "MAX_STACKS",
    "MIN_VERSION",
    "SEES",
    "Output",
    "abort_code",
    "finish_code",
    "fold",
    "parse_output",
    "sampling",
    "start_code",
    "stop_code",
]

DEFAULT_INTERVAL_BYTES = 512 * 1024
"""Bytes allocated per sample, on average (Go's and async-profiler's default): the
sampler's cost is its wrappers' on every allocation, the samples themselves are few
(bench/python_memory_bench.py)."""
MAX_STACKS = 20_000
"""Distinct stacks the sampler keeps (more are counted as dropped); the file written
keeps the largest ones, the rest summed into one ``[other stacks]`` frame."""
MIN_VERSION = (3, 9)
"""``PyThreadState_GetFrame`` and ``PyFrame_GetBack``, which the sampler walks with."""
ATTR = "_tracecar_pyalloc"
FORMAT = "tracecar-pyalloc 1"
SEES = (
    "alloc: Python functions, from tracecar's sampling allocation tracer loaded into the "
    "process for the window (no restart, nothing installed in it): what Python's "
    "allocators (objects and their buffers) handed out, freed again or not, one sample "
    "per N bytes on average, weighted; C libraries' own malloc is not in that view"
)
_ERRORS = {
    -1: "the sampler already runs in this process",
    -2: "the C API the sampler needs is missing (not CPython 3.9 or later)",
    -3: "bad arguments",
    -4: "out of memory for the sampler's tables",
}


def sampling(interval: int) -> str:
    """The sampling in words (the plan, the output)."""
    return (
        f"one sample per {interval} bytes allocated through Python's allocators, on average "
        "(exponential intervals, per thread); a sampled allocation of s bytes is weighted "
        f"s/p bytes and 1/p allocations, p = 1 - exp(-s/{interval}), so the totals are "
        "unbiased estimates"
    )


# --- the code run in the target ----------------------------------------------------------
# Python 3.9+ only reaches the sampler, but the version check itself must run (and say
# so) on older ones: no syntax newer than 3.6 here.

_HELPERS = r"""
def _bind(lib):
    import ctypes
    lib.tracecar_pyalloc_start.argtypes = [ctypes.c_int64, ctypes.c_int, ctypes.c_int,
                                           ctypes.c_uint64]
    lib.tracecar_pyalloc_stats.argtypes = [ctypes.POINTER(ctypes.c_uint64)]
    lib.tracecar_pyalloc_stats.restype = None
    lib.tracecar_pyalloc_stack.argtypes = [ctypes.c_uint32, ctypes.POINTER(ctypes.c_double),
                                           ctypes.POINTER(ctypes.c_double)]
    lib.tracecar_pyalloc_stack.restype = ctypes.c_uint32
    lib.tracecar_pyalloc_frame.argtypes = [ctypes.c_uint32, ctypes.c_uint32]
    lib.tracecar_pyalloc_frame.restype = ctypes.c_uint64
    lib.tracecar_pyalloc_code.argtypes = [ctypes.c_uint32]
    lib.tracecar_pyalloc_code.restype = ctypes.py_object
    lib.tracecar_pyalloc_release.restype = None
    return lib


def _unload(lib):
    # Only once the allocators are ours no more (stop() said 0) and the tables released:
    # then no thread is in the library (MEM and OBJ are called with the GIL, held here).
    import _ctypes
    _ctypes.dlclose(lib._handle)


def _stop(state):
    # The window ends here: the original allocators back (1: something wrapped ours
    # since, which then stay as pass-through and keep the library loaded).
    if state.get("stopped") is None:
        state["stopped"] = state["lib"].tracecar_pyalloc_stop()
    return state["stopped"]


def _close(state, unload=True):
    lib = state.pop("lib", None)
    if lib is None:
        return
    lib.tracecar_pyalloc_release()
    if unload and state.get("stopped") == 0:
        _unload(lib)
"""

_START = r"""
def _start():
    status = os.path.join(DIRECTORY, "tracecar-pymem-" + TOKEN + ".status")
    lines = [FORMAT, "python " + sys.version.split()[0], "cwd " + os.getcwd().replace("\n", "?")]
    state = {"lock": _thread.allocate_lock(), "token": TOKEN}
    try:
        if sys.version_info < MIN_VERSION:
            raise RuntimeError("Python %s: the allocation sampler needs CPython %d.%d or "
                               "later (PyThreadState_GetFrame)"
                               % ((sys.version.split()[0],) + MIN_VERSION))
        if sys.implementation.name != "cpython":
            raise RuntimeError("not CPython (%s)" % sys.implementation.name)
        gil = getattr(sys, "_is_gil_enabled", None)
        if gil is not None and not gil():
            raise RuntimeError("a free-threaded CPython without its GIL: the sampler's tables "
                               "rely on the GIL")
        other = getattr(sys, ATTR, None)
        if other is not None:
            raise RuntimeError("the allocation sampler already runs in this process "
                               "(another profile's, token %s)" % other.get("token"))
        import ctypes
        import signal  # noqa: F401  (imported now, not by our thread once sampling)
        lib = _bind(ctypes.PyDLL(SAMPLER))
        rc = lib.tracecar_pyalloc_start(INTERVAL, FRAMES, MAX_STACKS,
                                        int.from_bytes(os.urandom(8), "little"))
        if rc != 0:
            _unload(lib)  # a fresh copy: nothing of it runs
            raise RuntimeError(ERRORS.get(rc, "the sampler did not start (%d)" % rc))
        state["lib"] = lib

        def stop(token):
            # The end's first injection: a line of code, so that compiling the end's own
            # code (a megabyte of allocations) is not sampled.
            if token == TOKEN:
                _stop(state)

        state["stop"] = stop
        lines += ["already 0", "frames %d" % FRAMES]
        state["lock"].acquire()
        setattr(sys, ATTR, state)
    except BaseException as e:
        _write(status, FORMAT + "\nerror " + _error(e) + "\n")
        return

    def undo():
        if getattr(sys, ATTR, None) is state:
            delattr(sys, ATTR)
            _stop(state)
            # Not unloaded from this thread: an injection arriving now would hold the
            # loader's lock and wait for the GIL held here (see _finish). The
            # allocators are restored; the library stays mapped, unused.
            _close(state, unload=False)
        _remove(SAMPLER)

    _watch(state, status, lines, undo)


# Whatever happens, nothing reaches the app's stderr (PyRun_SimpleString prints).
try:
    _start()
except BaseException:
    pass
"""

_FINISH = r"""
def _collect(state):
    import ctypes
    lib = state["lib"]
    stats = (ctypes.c_uint64 * 7)()
    lib.tracecar_pyalloc_stats(stats)
    calls, nbytes, samples, dropped, truncated, nstacks = list(stats)[:6]
    names = {}
    rows = {}
    b, c = ctypes.c_double(), ctypes.c_double()
    for i in range(nstacks):
        depth = lib.tracecar_pyalloc_stack(i, ctypes.byref(b), ctypes.byref(c))
        frames = []
        mine = False
        for j in range(depth):
            v = lib.tracecar_pyalloc_frame(i, j)
            k, line = v >> 32, v & 0xFFFFFFFF
            if k not in names:
                co = lib.tracecar_pyalloc_code(k)
                # Ours: the injected code, and the one-line string that compiles it
                # (PyRun_SimpleString's "<string>": FILENAME is its constant).
                ours = co.co_filename == FILENAME or (
                    co.co_filename == "<string>" and FILENAME in co.co_consts)
                names[k] = (getattr(co, "co_qualname", None) or co.co_name,
                            co.co_filename, ours)
            name, path, ours = names[k]
            if ours:
                mine = True
            frames.append(("%s (%s:%d)" % (name, path, line)).replace(";", ":")
                          .replace("\n", "?"))
        if mine:  # the injected code's own allocations
            continue
        frames.reverse()  # outermost first
        key = ";".join(frames)
        old = rows.get(key, (0.0, 0.0))
        rows[key] = (old[0] + b.value, old[1] + c.value)
    order = sorted(rows.items(), key=lambda kv: -kv[1][0])
    lines = [FORMAT, "interval %d" % INTERVAL, "calls %d" % calls, "bytes %d" % nbytes,
             "samples %d" % samples, "dropped %d" % dropped, "truncated %d" % truncated,
             "replaced %d" % state["stopped"], "stacks %d" % len(order)]
    for key, (sb, sc) in order[:MAX_STACKS]:
        lines.append("%s %d %d" % (key, round(sb), round(sc)))
    rest = order[MAX_STACKS:]
    if rest:
        lines.append("[other stacks] %d %d" % (round(sum(r[1][0] for r in rest)),
                                               round(sum(r[1][1] for r in rest))))
    return "\n".join(lines) + "\n"


def _finish():
    out = os.path.join(DIRECTORY, "tracecar-pymem-" + TOKEN + ".folded")
    state = getattr(sys, ATTR, None)
    if state is None or state.get("token") != TOKEN:
        _write(out, FORMAT + "\nerror the window's state is gone from the process (its "
               "deadline passed: the agent came back too late)\n")
        return
    delattr(sys, ATTR)
    # All of it here, in the injection, not in a thread of ours: this thread holds the
    # dynamic loader's lock (the injected library's constructor runs inside dlopen), and
    # a dlclose from another thread would wait for that lock holding the GIL this one
    # needs to finish: a deadlock. A few thousand stacks read take milliseconds.
    try:
        _stop(state)
        text = _collect(state)
    except BaseException as e:
        text = FORMAT + "\nerror " + _error(e) + "\n"
    try:
        _close(state)
    except BaseException as e:
        text = FORMAT + "\nerror " + _error(e) + "\n"
    state["lock"].release()
    if time.time() < GIVE_UP_AT:  # else the agent stopped waiting: leave nothing
        _write(out, text)


# Whatever happens, nothing reaches the app's stderr (PyRun_SimpleString prints).
try:
    _finish()
except BaseException:
    pass
"""

_ABORT = r"""
def _abort():
    state = getattr(sys, ATTR, None)
    if state is None or state.get("token") != TOKEN:
        return
    delattr(sys, ATTR)
    _stop(state)
    _close(state)
    state["lock"].release()


# Whatever happens, nothing reaches the app's stderr (PyRun_SimpleString prints).
try:
    _abort()
except BaseException:
    pass
"""


def sampler_name(token: str) -> str:
    """The sampler's copy in the target's directory (removed once it is loaded)."""
    return pymem.file_names(token)["library"].removesuffix(".so") + ".sampler.so"


def start_code(*, token: str, directory: str, frames: int, interval: int, deadline_s: float) -> str:
    """Load the sampler (its copy at :func:`sampler_name`), start it, park the watchdog."""
    pymem.check_token(token)
    pymem.check_dir(directory)
    if not 1 <= frames <= 128:
        raise ValueError(f"frames {frames}: 1 to 128")
    if not 1024 <= interval <= 1 << 40:
        raise ValueError(f"interval {interval}: 1024 bytes to 1 TiB")
    return pymem.program(
        _HELPERS + _START,
        {
            "TOKEN": token,
            "DIRECTORY": directory,
            "SAMPLER": f"{directory}/{sampler_name(token)}",
            "FRAMES": int(frames),
            "INTERVAL": int(interval),
            "MAX_STACKS": MAX_STACKS,
            "MIN_VERSION": MIN_VERSION,
            "ATTR": ATTR,
            "ERRORS": _ERRORS,
            "DEADLINE_S": float(max(1.0, deadline_s)),
            "FORMAT": pymem.FORMAT,  # the status file is the leak path's
        },
    )


def finish_code(*, token: str, directory: str, interval: int, give_up_at: float) -> str:
    """Stop the sampler (if the end's first injection could not), read its stacks and
    unload it, write the stacks: all in the injection itself (see ``_finish``)."""
    pymem.check_token(token)
    pymem.check_dir(directory)
    return pymem.program(
        _HELPERS + _FINISH,
        {
            "TOKEN": token,
            "DIRECTORY": directory,
            "INTERVAL": int(interval),
            "ATTR": ATTR,
            "GIVE_UP_AT": float(give_up_at),
            "MAX_STACKS": MAX_STACKS,
            "FILENAME": pymem.FILENAME,
            "FORMAT": FORMAT,
        },
    )


def stop_code(*, token: str) -> str:
    """The window's end: the sampler stopped by the start's own function, in a line of
    code (compiling the end's own code, next, allocates a megabyte, which would be sampled
    otherwise; nothing printed whatever happens; the end then finds it stopped)."""
    pymem.check_token(token)
    return (
        "try:\n"
        f"    __import__('sys').__dict__[{ATTR!r}]['stop']({token!r})\n"
        "except BaseException:\n"
        "    pass\n"
    )


def abort_code(*, token: str) -> str:
    """Stop and unload the sampler, wake the watchdog, write nothing."""
    pymem.check_token(token)
    return pymem.program(_HELPERS + _ABORT, {"TOKEN": token, "ATTR": ATTR, "FORMAT": FORMAT})


# --- what the target writes ---------------------------------------------------------------


@dataclass(slots=True)
class Output:
    error: str = ""
    interval: int = 0
    calls: int = 0
    """Allocations through Python's allocators in the window (exact)."""
    bytes: int = 0
    """Their bytes (exact)."""
    samples: int = 0
    dropped: int = 0
    """Samples not kept: the stack table was full."""
    truncated: int = 0
    """Samples whose stack was deeper than the frames kept."""
    replaced: bool = False
    """Something replaced Python's allocators over the sampler's during the window: its
    hooks stay as pass-through and its library loaded."""
    stack_count: int = 0
    stacks: dict[str, tuple[int, int]] = field(default_factory=dict)
    """``frame;frame`` (outermost first) -> (bytes, allocations), estimated."""


_ROW = re.compile(r"(.*) (\d+) (\d+)")
_NUMBERS = ("interval", "calls", "bytes", "samples", "dropped", "truncated", "stacks")


def parse_output(text: str) -> Output:
    out = Output()
    rows = pymem.records(text, FORMAT)
    if rows is None:
        out.error = "the result file is not the agent's"
        return out
    for key, value, line in rows:
        if key == "error":
            out.error = value
            continue
        if key in _NUMBERS and value.isdigit():
            setattr(out, "stack_count" if key == "stacks" else key, int(value))
            continue
        if key == "replaced" and value in ("0", "1"):
            out.replaced = value == "1"
            continue
        m = _ROW.fullmatch(line)
        if m is None or int(m[2]) <= 0:
            continue
        old = out.stacks.get(m[1], (0, 0))
        out.stacks[m[1]] = (old[0] + int(m[2]), old[1] + int(m[3]))
    return out


_FRAME = re.compile(r"(.*) \((.*):(\d+)\)")


def fold(
    stacks: dict[str, tuple[int, int]],
    *,
    comm: str,
    read_source: pymem.SourceReader | None = None,
) -> tuple[dict[str, int], dict[str, int]]:
    """Folded stacks by bytes and by allocations: ``comm;[python];func (file:line);...``,
    outermost first, the spelling of leak profiles and py-spy's CPU profiles.

    ``read_source``: before 3.11 code objects have no qualified name (a method is
    ``get``, not ``Cache.get``); given the target's sources, each frame gets the name of
    the innermost ``def`` or ``class`` holding its line, as leak profiles do, when that
    name ends with the code object's own."""
    root = ";".join([comm.replace(" ", "_").replace(";", ":") or "python", "[python]"])
    indexes: dict[str, pymem.FunctionIndex | None] = {}

    def qualified(frame: str) -> str:
        m = _FRAME.fullmatch(frame)
        if read_source is None or m is None or not m[2].endswith((".py", ".pyw")):
            return frame
        name, path, line = m[1], m[2], int(m[3])
        if path not in indexes:
            text = read_source(path)
            indexes[path] = pymem.FunctionIndex(text) if text is not None else None
        index = indexes[path]
        full = index.at(line) if index is not None else name
        if full != name and full.rsplit(".", 1)[-1] == name:
            return f"{full} ({path}:{line})"
        return frame

    by_bytes: dict[str, int] = {}
    by_count: dict[str, int] = {}
    for stack, (nbytes, count) in stacks.items():
        frames = ";".join(qualified(f) for f in stack.split(";")) if read_source else stack
        key = f"{root};{frames}" if frames else root
        by_bytes[key] = by_bytes.get(key, 0) + nbytes
        if count > 0:
            by_count[key] = by_count.get(key, 0) + count
    return by_bytes, by_count
