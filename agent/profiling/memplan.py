"""The pure plan of a memory profile (``type``: ``alloc`` or ``leak``): each target's
allocator, what its runtime lets the C-allocator view see (and not), the sampling, and
the bpftrace program of :mod:`agent.profiling.alloc`.

Nothing here touches the system: :mod:`agent.profiling._alloc` finds each target's
allocator (the object that defines ``malloc`` for it, read through /proc/PID/root) and
the planner (:func:`agent.profiling.planner.plan`) hands it here; ``dry_run`` shows the
:class:`MemoryPlan` unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field

from agent.errors import Conflict
from agent.profiling import alloc, pyalloc, pymem

MEMORY_TYPES = ("alloc", "leak")
MAX_TARGETS = 64
"""Processes one memory profile may watch: each one's allocator calls trap into the
kernel, so a whole big pod at once is rarely what is meant."""

# What the C-allocator view sees of each runtime, said in /capabilities and the plan.
RUNTIME_NOTES: dict[str, str] = {
    "native": "every allocation through the C allocator, by native stack",
    "go": "Go's runtime allocates its heap itself (arenas it maps), not with malloc: Go "
    "objects do not show, only what cgo and C libraries allocate; for the Go heap, use the "
    "runtime's own heap profile (net/http/pprof's /debug/pprof/heap)",
    "node": "V8 keeps JavaScript objects on its own heap (pages it maps): they do not show; "
    "native memory does (Buffers' and ArrayBuffers' backing stores, addons, libuv), under "
    "node's C++ frames",
    "python": "leak: Python functions, from tracemalloc started inside the process for the "
    "window (CPython on glibc; no restart, nothing installed in it): what was allocated in "
    "the window and is live at its end; alloc: Python functions, from tracecar's sampling "
    "allocation tracer loaded into the process for the window (CPython 3.9+ on glibc): "
    "what Python's allocators handed out, freed or not, sampled by bytes; with "
    "python_frames 0 (or where it cannot be entered), the C-allocator view: objects of 512 "
    "bytes or less come from pymalloc's 256 KiB arenas, so arenas and large objects show "
    "under the interpreter's C frames (docs/memory.md: Python frames)",
    "java": "alloc: Java methods from async-profiler's alloc mode, loaded into the JVM "
    "through jattach (the JVM's own heap sampling, under [java]), beside the JVM's native "
    "memory (JIT, GC structures, direct buffers, JNI) by native stack; leak: the native "
    "memory only (the Java heap is reserved once at start: use the class histogram)",
    "dotnet": "the GC heap is reserved by the runtime: managed objects do not show; native "
    "memory does (the runtime's own, interop), by native stack",
}


PYTHON_C_VIEW = (
    "the C-allocator view (where Python frames cannot be had, or python_frames 0): objects "
    "of 512 bytes or less come from pymalloc's 256 KiB arenas, so arenas and large objects "
    "show under the interpreter's C frames, not Python functions"
)


@dataclass(frozen=True, slots=True)
class MemoryTargetFacts:
    """What the memory planner needs of one target (the service gathers it)."""

    pid: int
    comm: str
    runtime: str
    allocator: alloc.Allocator | None
    why_none: str = ""
    """Why no allocator was found (a static stripped binary, a pure Go one...)."""
    python_dir: str | None = None
    """leak/alloc, CPython: the target's directory the Python-frames injection uses (None:
    no Python frames, the C-allocator view)."""
    python_why: str = ""
    """leak/alloc, Python: why it gets no Python frames (empty: it does, or it is not
    Python)."""


class MemoryTarget(BaseModel):
    pid: int
    comm: str
    runtime: str
    allocator: str | None = Field(description="glibc, jemalloc, tcmalloc, static, or none")
    object: str | None = Field(default=None, description="the object probed, as it sees it")
    functions: list[str] = Field(default_factory=list)
    sees: str = Field(description="what the C-allocator view shows of this runtime")


class PythonFramesTarget(BaseModel):
    pid: int
    directory: str = Field(description="where the injected library and results go, in it")


LEAK_HOW = (
    "tracemalloc started inside each CPython target for the window, by code injected with "
    "pyinjector (ptrace, no debugger) at a thread waiting in a system call; a snapshot of "
    "the live blocks at the end, then tracing stopped"
)
ALLOC_HOW = (
    "tracecar's sampling allocation tracer (a small C library) loaded into each CPython "
    "target for the window with ctypes, by code injected with pyinjector (ptrace, no "
    "debugger) at a thread waiting in a system call; Python's allocators wrapped, then "
    "restored and the library unloaded at the end"
)


class PythonFrames(BaseModel):
    how: str = Field(default=LEAK_HOW)
    frames: int = Field(description="Python frames kept per allocation (per sample: alloc)")
    interval_bytes: int | None = Field(
        default=None, description="alloc: bytes allocated per sample, on average"
    )
    sampling: str | None = Field(default=None, description="alloc: the sampling, in words")
    targets: list[PythonFramesTarget]


class JavaMethods(BaseModel):
    """alloc: the Java targets' allocations by Java method (async-profiler in each JVM:
    :mod:`agent.profiling._asyncprof`), beside their native memory."""

    pids: list[int]
    available: bool
    reason: str = Field(description="what is done, or why it cannot be")
    interval_bytes: int = Field(description="Java heap bytes allocated per sample, on average")
    sampling: str
    library: str = Field(description="async-profiler's library, as the agent reads it")


class MemoryPlan(BaseModel):
    kind: str
    period: int = Field(description="one allocation smaller than large_bytes in this many")
    large_bytes: int = Field(description="allocations of at least this size: every one")
    max_outstanding: int = Field(description="leak: sampled allocations tracked at once")
    sampling: str
    targets: list[MemoryTarget]
    skipped: list[str] = Field(
        default_factory=list, description="targets without an allocator to probe, and why"
    )
    notes: list[str] = Field(default_factory=list)
    python: PythonFrames | None = Field(
        default=None, description="leak and alloc: the Python processes seen in Python frames"
    )
    java_methods: JavaMethods | None = Field(
        default=None, description="alloc with Java targets: their Java methods' allocations"
    )


def plan_memory(
    *,
    kind: alloc.MemoryKind,
    targets: list[MemoryTargetFacts],
    pid_ns: int,
    duration_s: float,
    period: int,
    large_bytes: int = alloc.DEFAULT_LARGE_BYTES,
    max_outstanding: int = alloc.DEFAULT_MAX_OUTSTANDING,
    python_frames: int = pymem.DEFAULT_FRAMES,
    python_interval: int = pyalloc.DEFAULT_INTERVAL_BYTES,
    probe_offsets: bool = False,
) -> tuple[MemoryPlan, str]:
    """The memory plan and its bpftrace program; 409 when no target has an allocator.

    ``probe_offsets``: bpftrace can place a uprobe at an offset into a function, so a
    leak profile probes free past the instructions the kernel would single-step."""
    if len(targets) > MAX_TARGETS:
        raise Conflict(
            f"a memory profile watches at most {MAX_TARGETS} processes ({len(targets)} "
            "asked): name a pid, pids or a container"
        )
    # python_frames 0: the C-allocator view for Python processes too (asked for).
    py = [t for t in targets if python_frames and t.python_dir is not None]
    usable = [t for t in targets if t.allocator is not None and t not in py]
    skipped = [
        f"pid {t.pid} ({t.comm}): {t.why_none}"
        for t in targets
        if t.allocator is None and t not in py
    ]
    if not usable and not py:
        raise Conflict(
            "no target has an allocator to probe: "
            + "; ".join(skipped[:10])
            + ". A memory profile probes malloc and free in the C library (glibc), jemalloc, "
            "tcmalloc, or an executable that is statically linked with its symbols"
        )
    probes: dict[tuple[int, int] | str, alloc.Probe] = {}
    for t in usable:
        a = t.allocator
        assert a is not None
        # One set of probes per file: the same libc reached through two targets' roots is
        # one inode, and two uprobes there would count each call twice.
        key: tuple[int, int] | str = a.identity if a.identity != (0, 0) else a.host_path
        offsets = (
            tuple((name, n) for name, n, _ in a.entry_skips)
            if probe_offsets and kind == "leak"
            else ()
        )
        probes.setdefault(key, alloc.Probe(a.host_path, a.functions, offsets))
    text = (
        alloc.program(
            kind=kind,
            pids=[t.pid for t in usable],
            probes=list(probes.values()),
            pid_ns=pid_ns,
            duration_s=duration_s,
            period=period,
            large_bytes=large_bytes,
            max_outstanding=max_outstanding,
        )
        if usable
        else ""
    )
    sampling = (
        f"every allocation of {large_bytes} bytes or more, and one smaller allocation in "
        f"{period} at random, weighted {period} times"
        if period > 1
        else "every allocation"
    )
    if not usable:
        sampling = (
            "none: tracemalloc records every allocation through Python's allocators"
            if kind == "leak"
            else "Python frames: " + pyalloc.sampling(python_interval)
        )
    notes = _notes(
        kind=kind,
        native=bool(usable),
        python=bool(py),
        targets=targets,
        python_frames=python_frames,
        python_interval=python_interval,
        probe_offsets=probe_offsets,
    )
    out = MemoryPlan(
        kind=kind,
        period=period,
        large_bytes=large_bytes,
        max_outstanding=max_outstanding,
        sampling=sampling,
        targets=[
            MemoryTarget(
                pid=t.pid,
                comm=t.comm,
                runtime=t.runtime,
                allocator=t.allocator.flavor if t.allocator and t not in py else None,
                object=t.allocator.path if t.allocator and t not in py else None,
                functions=list(t.allocator.functions) if t.allocator and t not in py else [],
                sees=(pymem.SEES if kind == "leak" else pyalloc.SEES)
                if t in py
                else PYTHON_C_VIEW
                if t.runtime == "python"
                else RUNTIME_NOTES.get(t.runtime, RUNTIME_NOTES["native"]),
            )
            for t in sorted(targets, key=lambda t: t.pid)
        ],
        skipped=skipped,
        notes=notes,
        python=PythonFrames(
            how=LEAK_HOW if kind == "leak" else ALLOC_HOW,
            frames=python_frames,
            interval_bytes=python_interval if kind == "alloc" else None,
            sampling=pyalloc.sampling(python_interval) if kind == "alloc" else None,
            targets=[PythonFramesTarget(pid=t.pid, directory=t.python_dir or "/tmp") for t in py],
        )
        if py
        else None,
    )
    return out, text


def _free_notes(targets: list[MemoryTargetFacts], *, probe_offsets: bool) -> list[str]:
    """leak: where free is probed, and what each call costs there."""
    skips = {
        (name, n, what): t.allocator.path
        for t in targets
        if t.allocator is not None
        for name, n, what in t.allocator.entry_skips
    }
    if not skips:
        return ["leak: free is probed at its entry (one trap per call)"]
    where = ", ".join(f"{path}: {name}+{n} ({what})" for (name, n, what), path in skips.items())
    if probe_offsets:
        return [
            f"leak: free is probed past its first instructions ({where}): the kernel "
            "would single-step them on every call, a second trap (tens of microseconds in "
            "a VM); the instruction there is emulated (bench/memory_bench.py)"
        ]
    return [
        f"leak: free is probed at its entry, and its first instructions ({where}) are "
        "single-stepped on every call (tens of microseconds in a VM; bench/memory_bench.py): "
        "this bpftrace cannot place a probe past them (built without offset support: "
        "`bpftrace --info` says bfd: no; the tracecar image's bpftrace, and the one "
        "scripts/setup builds, can)"
    ]


def _notes(
    *,
    kind: alloc.MemoryKind,
    native: bool,
    python: bool,
    targets: list[MemoryTargetFacts],
    python_frames: int,
    python_interval: int,
    probe_offsets: bool = False,
) -> list[str]:
    """The plan's notes: what each view costs the targets and what it leaves out
    (``native``: bpftrace probes the C allocator; ``python``: Python frames)."""
    notes = [
        "every allocator call of the targets traps into the kernel (a uprobe, ~2 us here; "
        "bench/memory_bench.py), sampled or not: an app allocating a million times a "
        "second slows down several-fold while the profile runs",
        "bpftrace attaches to the allocator's file for every process that maps it: other "
        "processes of the node using the same file trap too (the program returns at once "
        "for them)",
    ]
    if not native:
        notes = []  # no bpftrace: none of its costs
    notes += [
        f"pid {t.pid} ({t.comm}): no Python frames ({t.python_why}); the C-allocator view"
        for t in targets
        if python_frames and t.python_why and t.python_dir is None
    ]
    if python and kind == "leak":
        notes.append(
            "Python frames: tracemalloc slows the targets' allocations while the window runs "
            "and keeps about 60-300 bytes per live block it traces (bench/python_memory_bench.py)"
        )
    if python and kind == "alloc":
        notes.append(
            "Python frames: " + pyalloc.sampling(python_interval) + "; the wrappers cost "
            "every allocation a few nanoseconds while the window runs, each sample a walk of "
            "the Python stack (bench/python_memory_bench.py); only Python's allocators are "
            "seen (C libraries' own malloc, and PyMem_RawMalloc, are not)"
        )
    if kind == "leak" and native:
        notes += _free_notes(targets, probe_offsets=probe_offsets)
        notes.append(
            "leak: allocations made during the window and not freed by its end; what was "
            "allocated before it started is not seen (its frees are ignored)"
        )
    return notes
