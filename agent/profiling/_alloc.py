"""Execution of a memory profile (``alloc``, ``leak``): the allocator found, bpftrace run,
its output folded by bytes and by allocations, every output written in both weights.

Owned here:

* :func:`find_allocator`: the object that defines a target's ``malloc`` (the executable
  when statically linked with its symbols, else jemalloc or tcmalloc when mapped, else
  the C library) and its allocation functions;
* :class:`SymbolSnapshot`: the targets' mappings and symbol tables, read when the
  recording starts (and again at its end, while they live), so a target that exits
  during the profile keeps its function names;
* :func:`run`: bpftrace through :mod:`agent._proc` (own process group, a timeout of
  duration + slack, always reaped; SIGINT on stop, so END prints what was recorded),
  progress (``attached``), the notes (sampling, drops, lost stacks, exits), and the
  artifacts: ``folded.txt``/``flamegraph.svg``/``speedscope.json`` weighted by bytes,
  their ``-count`` twins weighted by allocations, ``profile.pb.gz`` with both sample
  types, and bpftrace's raw output ``bpftrace.json``;
* the Java targets of an ``alloc`` profile: async-profiler started in each JVM before
  bpftrace and finished after it, whatever happens (:mod:`agent.profiling._asyncprof`),
  its stacks merged into both views under ``[java]`` and said in the notes.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from agent import _proc, procfs, symbols
from agent.errors import Conflict, Invalid, NotFound
from agent.jobs import Job, atomic_path, write_atomic
from agent.profiling import _asyncprof, _pymem, alloc
from agent.profiling._artifacts import BPFTRACE_OUT, FOLDED, PPROF, SPEEDSCOPE, SVG
from agent.profiling._result import ProfileResult, TargetSeen
from agent.profiling.memplan import JavaMethods, MemoryTargetFacts
from agent.profiling.perf_record import run_to_end
from agent.profiling.planner import Plan, TargetFacts
from tracecar_formats.collapse import format_folded

ProfileJob = Job[ProfileResult]
Weight = Literal["bytes", "count"]
COUNT_SUFFIX = "-count"
_NOISE = ("RLIMIT_MEMLOCK", "Attaching ", "WARNING: Addrspace mismatch")
_LOST_STACK = "failed to look up stack id"
_THIRD_PARTY = {"jemalloc": "jemalloc", "tcmalloc": "tcmalloc"}


def weighted(name: str, weight: Weight) -> str:
    """The artifact holding ``name`` weighted by ``weight`` (bytes: the name itself)."""
    if weight == "bytes" or name == PPROF:  # the pprof file holds both sample types
        return name
    stem, dot, ext = name.rpartition(".")
    return f"{stem}{COUNT_SUFFIX}{dot}{ext}"


def _candidates(pid: int, exe: str | None) -> list[tuple[str, str]]:
    """(flavor, path) to look for malloc in, in the order the dynamic linker would
    find it: the executable, an allocator library it links, the C library."""
    out: list[tuple[str, str]] = []
    if exe:
        out.append(("static", exe))
    libs = [m.path for m in symbols.maps(pid) if m.executable]
    for path in dict.fromkeys(libs):
        base = os.path.basename(path)
        for key, flavor in _THIRD_PARTY.items():
            if key in base:
                out.append((flavor, path))
    for path in dict.fromkeys(libs):
        base = os.path.basename(path)
        if base.startswith("libc.so") or base.startswith("libc-") or base.startswith("ld-musl"):
            out.append(("glibc" if "musl" not in base else "musl", path))
    return out


def _code_at(host: Path, syms: symbols.ObjectSymbols, vaddr: int, size: int = 16) -> bytes:
    """The first bytes of a function, read from its file (empty if they cannot be)."""
    offset = syms.vaddr_to_offset(vaddr)
    if offset is None:
        return b""
    try:
        with host.open("rb") as f:
            f.seek(offset)
            return f.read(size)
    except OSError:
        return b""


def find_allocator(fact: TargetFacts) -> MemoryTargetFacts:
    """The allocator of one target, or why there is none to probe."""
    pid = fact.pid
    try:
        cands = _candidates(pid, fact.exe)
    except NotFound as e:
        return MemoryTargetFacts(pid, fact.comm, fact.runtime, None, f"gone: {e}")
    for flavor, path in cands:
        try:
            host = procfs.resolve_in_root(pid, path)
            syms = symbols.object_symbols(host)
            st = host.stat()
        except (NotFound, Invalid, OSError):
            continue
        by_name = {s.name: s for s in syms.functions}
        if "malloc" not in by_name or "free" not in by_name:
            continue
        functions: list[str] = []
        seen_at: set[int] = set()
        for name in (*alloc.ENTRY_FUNCTIONS, *alloc.FREE_FUNCTIONS):
            sym = by_name.get(name)
            # Two names at one address (glibc's aligned_alloc is memalign): one probe,
            # or each call would count twice.
            if sym is None or sym.address in seen_at:
                continue
            seen_at.add(sym.address)
            functions.append(name)
        skips: list[tuple[str, int, str]] = []
        for name in alloc.FREE_FUNCTIONS:
            if name in functions:
                n, what = alloc.entry_skip(_code_at(host, syms, by_name[name].address))
                if n:
                    skips.append((name, n, "; ".join(what)))
        return MemoryTargetFacts(
            pid,
            fact.comm,
            fact.runtime,
            alloc.Allocator(
                pid=pid,
                flavor=flavor,
                path=path,
                host_path=str(host),
                functions=tuple(functions),
                identity=(st.st_dev, st.st_ino),
                entry_skips=tuple(skips),
            ),
        )
    if fact.runtime == "go":
        why = (
            "a Go program without cgo: Go's runtime allocates without malloc (no C "
            "allocator to probe); use the runtime's heap profile (net/http/pprof)"
        )
    elif fact.stripped:
        why = (
            f"no allocator symbols: {fact.exe or fact.comm} is statically linked and stripped "
            "(no malloc in its symbol tables) and maps no C library"
        )
    else:
        why = f"no allocator symbols: neither {fact.exe or fact.comm} nor a library it maps "
        why += "defines malloc and free"
    return MemoryTargetFacts(pid, fact.comm, fact.runtime, None, why)


class SymbolSnapshot:
    """The targets' mappings and their objects' symbols, kept for after they exit."""

    def __init__(self) -> None:
        self._maps: dict[int, list[symbols.Mapping]] = {}
        self._objects: dict[tuple[int, str], symbols.ObjectSymbols | None] = {}

    def take(self, pids: list[int]) -> None:
        for pid in pids:
            try:
                mappings = symbols.maps(pid)
            except NotFound:
                continue  # gone: what was read before stays
            self._maps[pid] = mappings
            for m in mappings:
                if m.executable and (pid, m.path) not in self._objects:
                    try:
                        syms = symbols.object_symbols(procfs.resolve_in_root(pid, m.path))
                    except (NotFound, Invalid):
                        syms = None
                    self._objects[(pid, m.path)] = syms

    def names(self, pid: int, addresses: list[int]) -> list[str]:
        """As :func:`agent.symbols.function_names`, from the snapshot."""
        mappings = self._maps.get(pid, [])
        out = []
        for a in addresses:
            name = "[unknown]"
            for m in mappings:
                if m.start <= a < m.end:
                    syms = self._objects.get((pid, m.path))
                    base = os.path.basename(m.path)
                    if syms is None:
                        name = f"[{base}]"
                    else:
                        sym = syms.function_at(syms.offset_to_vaddr(a - m.start + m.offset))
                        name = sym.name if sym is not None else f"[{base}]"
                    break
            out.append(name)
        return out


async def _watch_attached(job: ProfileJob, path: Path, save: Callable[[ProfileJob], None]) -> None:
    """Progress: ``attached`` once bpftrace's BEGIN says every probe is in (allocations
    from then on are recorded)."""
    marker = f'"data": "{alloc.ATTACHED}"'.encode()
    while True:
        await asyncio.sleep(0.2)
        try:
            with path.open("rb") as f:
                head = f.read(4096)
        except OSError:
            continue
        if marker in head:
            job.result.attached = True
            job.result.attached_at = time.time()
            save(job)
            return


async def run(
    job: ProfileJob, the_plan: Plan, *, save: Callable[[ProfileJob], None], comms: dict[int, str]
) -> None:
    """Record, fold and render one memory profile (``job.result`` is its metadata)."""
    meta = job.result
    mem = the_plan.memory
    assert mem is not None
    snapshot = SymbolSnapshot()
    await asyncio.to_thread(snapshot.take, the_plan.pids)
    java_runs: list[_asyncprof.Run] = []
    # Python processes in Python frames (leak: tracemalloc inside them; alloc: tracecar's
    # sampler), before bpftrace.
    py = _pymem.Window(mem.python, comms=comms, timeout_s=the_plan.timeout_s, kind=mem.kind)
    try:
        await _java_start(the_plan, java_runs)
        await py.start()
        if py.planned and not py.opened and not the_plan.bpftrace_argv:
            raise Conflict(f"no Python frames: {py.failure()}")
        if the_plan.bpftrace_argv:
            text, stderr, stopped_early = await _record(job, the_plan, save)
        else:
            meta.attached, meta.attached_at = True, time.time()
            save(job)
            stopped_early = await _pymem.wait_window(the_plan.duration_s, job.stop_requested)
            text, stderr = "", ""
    except BaseException:
        # Tracing stopped in the targets, nothing written or kept (a cancel too: shielded).
        await asyncio.shield(py.end(keep=False))
        raise
    finally:
        # Each JVM's profiler is stopped and its files removed, whatever happened to
        # bpftrace (a cancel too: shielded), and what it sampled is kept.
        await asyncio.shield(_java_finish(java_runs, comms))
    meta.recording_finished_at = time.time()
    meta.phase = "post-processing"
    save(job)
    await py.end(keep=True)
    await asyncio.to_thread(snapshot.take, the_plan.pids)  # libraries loaded meanwhile
    parsed = await asyncio.to_thread(alloc.parse_output, text)
    by_bytes, by_count = await asyncio.to_thread(
        alloc.fold, parsed.sites, names=snapshot.names, comms=comms
    )
    lost_stacks = stderr.count(_LOST_STACK)
    warnings = [
        ln.strip()
        for ln in stderr.splitlines()
        if ln.strip() and not any(n in ln for n in _NOISE) and _LOST_STACK not in ln
    ]
    exited = [p for p in the_plan.pids if not procfs.pid_exists(p)]
    meta.stopped_early = stopped_early
    meta.bpftrace_warnings = warnings[:20]
    meta.exited_pids = exited
    meta.weights = ["bytes", "count"]
    meta.sampling = {
        "period": mem.period,
        "large_bytes": mem.large_bytes,
        "said": mem.sampling,
        **({"java": java} if (java := _java_said(java_runs, mem.java_methods)) else {}),
        **({"python": mem.python.sampling} if mem.python and mem.python.sampling else {}),
    }
    meta.memory = _summary(mem.kind, parsed, by_bytes, by_count, lost_stacks)
    # The Java stacks join the graphs after the summary, which counts the C allocator's.
    java_notes = _java_merge(java_runs, by_bytes, by_count, mem.java_methods, meta.memory)
    # So do the Python ones (their figures: memory.python, by pid).
    py_bytes, py_count = py.stacks()
    for k, v in py_bytes.items():
        by_bytes[k] = by_bytes.get(k, 0) + v
    for k, v in py_count.items():
        by_count[k] = by_count.get(k, 0) + v
    if py.planned:
        meta.memory["python"] = py.summary()
    notes = _notes(mem.kind, meta.memory or {}, exited, stopped_early, mem.max_outstanding)
    if not the_plan.bpftrace_argv:  # Python frames only: no C allocator was watched
        notes = [n for n in notes if not n.startswith("no allocations")]
    meta.notes = notes + java_notes + py.notes()
    meta.targets = [
        TargetSeen(pid=t.pid, comm=t.comm, runtime=t.runtime, exited=t.pid in exited)
        for t in mem.targets
    ]
    await asyncio.to_thread(_render_all, job, the_plan, by_bytes, by_count)
    meta.phase = "done"
    meta.artifacts = sorted(p.name for p in job.dir.iterdir() if p.name != "job.json")
    if stopped_early:
        job.message = "stopped early on request; what was recorded is kept"


async def _java_start(the_plan: Plan, runs: list[_asyncprof.Run]) -> None:
    """alloc: async-profiler started in each Java target, before bpftrace attaches (each
    run is in ``runs`` before it starts: the caller finishes them, whatever happens)."""
    java = the_plan.memory.java_methods if the_plan.memory else None
    if java is None or not java.available:
        return
    lib = Path(java.library)
    timeout = the_plan.timeout_s + 60  # past the agent's own timeout: a safety net only
    for pid in java.pids:
        if pid in the_plan.pids:
            runs.append(_asyncprof.new_run(pid))
            await _asyncprof.start(
                runs[-1], lib=lib, interval=java.interval_bytes, timeout_s=timeout
            )


async def _java_finish(runs: list[_asyncprof.Run], comms: dict[int, str]) -> None:
    for r in runs:
        await _asyncprof.finish(r, comm=comms.get(r.pid, "java"))


def _java_merge(
    runs: list[_asyncprof.Run],
    by_bytes: dict[str, int],
    by_count: dict[str, int],
    java: JavaMethods | None,
    summary: dict[str, Any] | None,
) -> list[str]:
    """The Java stacks added to both views and their figures to the summary (``java``,
    by pid); what each JVM gave, said."""
    notes: list[str] = []
    figures: dict[str, dict[str, int]] = {}
    for r in runs:
        for k, v in r.stacks_bytes.items():
            by_bytes[k] = by_bytes.get(k, 0) + v
        for k, v in r.stacks_count.items():
            by_count[k] = by_count.get(k, 0) + v
        nbytes, samples = sum(r.stacks_bytes.values()), sum(r.stacks_count.values())
        if r.started:
            figures[str(r.pid)] = {"bytes_estimated": nbytes, "samples": samples}
        if r.stacks_bytes:
            how = f"{samples} samples, " if r.stacks_count else ""
            reused = f"; driven through the copy an earlier profile loaded ({r.reused})"
            notes.append(
                f"pid {r.pid} (java): Java methods under [java] from async-profiler's alloc "
                f"mode ({how}{nbytes} bytes estimated{reused if r.reused else ''}); the "
                "rest is its native memory"
            )
        elif r.started and not r.message:
            notes.append(f"pid {r.pid} (java): no Java allocation was sampled")
        if r.message:
            what = "Java methods: " if r.stacks_bytes else "no Java methods: "
            notes.append(f"pid {r.pid} (java): {what}{r.message}")
    if java is not None and not java.available:
        notes.append(f"Java targets: no allocations by Java method ({java.reason})")
    if summary is not None and figures:
        summary["java"] = figures
    return notes


def _java_said(runs: list[_asyncprof.Run], java: JavaMethods | None) -> str:
    return java.sampling if java is not None and any(r.started for r in runs) else ""


async def _record(
    job: ProfileJob, the_plan: Plan, save: Callable[[ProfileJob], None]
) -> tuple[str, str, bool]:
    """bpftrace until its timer, a stop or the timeout: its output, messages, and whether
    it was stopped early."""
    mem = the_plan.memory
    assert mem is not None
    output = job.artifact(BPFTRACE_OUT)
    kind: alloc.MemoryKind = "leak" if mem.kind == "leak" else "alloc"
    env = {**os.environ, **alloc.env(max_outstanding=mem.max_outstanding, kind=kind)}
    with atomic_path(output) as part:
        with part.open("wb") as out:
            child = await _proc.Child.start(the_plan.bpftrace_argv, stdout=out.fileno(), env=env)
        watcher = asyncio.ensure_future(_watch_attached(job, part, save))
        try:
            rc, stderr, stopped_early = await run_to_end(
                child, the_plan, stop=job.stop_requested, tool="bpftrace"
            )
        finally:
            watcher.cancel()
        text = await asyncio.to_thread(part.read_text, encoding="utf-8", errors="replace")
        if rc != 0 and '"type": "map"' not in text:
            said = "\n".join(ln for ln in stderr.splitlines() if "RLIMIT_MEMLOCK" not in ln)
            raise _proc.ToolFailed(
                f"bpftrace failed: {_proc.tool_message(said, rc)}",
                argv=the_plan.bpftrace_argv,
                returncode=rc,
                stderr=stderr,
            )
    return text, stderr, stopped_early


def _summary(
    kind: str,
    parsed: alloc.AllocOutput,
    by_bytes: dict[str, int],
    by_count: dict[str, int],
    lost_stacks: int,
) -> dict[str, Any]:
    per_pid = {
        str(pid): {
            "allocations": s.calls,
            "allocated_bytes": s.bytes,
            "sampled": s.sampled,
            "frees": s.frees,
            "dropped": s.dropped,
            "dropped_bytes": s.dropped_bytes,
        }
        for pid, s in sorted(parsed.stats.items())
    }
    label = "outstanding" if kind == "leak" else "allocated"
    return {
        "kind": kind,
        f"{label}_bytes_estimated": sum(by_bytes.values()),
        f"{label}_allocations_estimated": sum(by_count.values()),
        "allocations_counted": sum(s.calls for s in parsed.stats.values()),
        "bytes_counted": sum(s.bytes for s in parsed.stats.values()),
        "sampled": sum(s.sampled for s in parsed.stats.values()),
        "dropped": sum(s.dropped for s in parsed.stats.values()),
        "dropped_bytes": sum(s.dropped_bytes for s in parsed.stats.values()),
        "lost_stacks": lost_stacks,
        "probes_attached": parsed.attached_probes,
        "by_pid": per_pid,
    }


def _notes(
    kind: str, summary: dict[str, Any], exited: list[int], stopped: bool, cap: int
) -> list[str]:
    notes: list[str] = []
    if exited:
        notes.append(
            f"pid(s) {', '.join(map(str, exited))} exited during the recording; what was "
            "recorded up to then is kept (named from the symbols read at the start)"
        )
    if summary["allocations_counted"] == 0:
        notes.append("no allocations: the targets did not call the allocator while recording")
    elif kind == "alloc":
        notes.append(
            f"{summary['allocations_counted']} allocations ({summary['bytes_counted']} bytes) "
            f"were counted exactly; {summary['sampled']} were sampled with their stacks, "
            f"weighted to an estimate of {summary['allocated_bytes_estimated']} bytes"
        )
    if summary["dropped"]:
        notes.append(
            f"leak: {summary['dropped']} sampled allocations (about {summary['dropped_bytes']} "
            f"bytes) were not tracked: {cap} were outstanding at once (the bound); the leak "
            "graph misses them"
        )
    if summary["lost_stacks"]:
        notes.append(
            f"{summary['lost_stacks']} stacks did not fit bpftrace's stack map (hash "
            "collisions or a full map): their allocations are counted without a stack"
        )
    if kind == "leak" and stopped:
        notes.append("stopped early: outstanding means not freed when it was stopped")
    return notes


def _render_all(
    job: ProfileJob, the_plan: Plan, by_bytes: dict[str, int], by_count: dict[str, int]
) -> None:
    from tracecar_formats.flamegraph import render_svg
    from tracecar_formats.memprofile import to_memory_pprof
    from tracecar_formats.speedscope import to_speedscope

    meta = job.result
    mem = the_plan.memory
    assert mem is not None
    started = meta.recording_started_at or job.created_at
    finished = meta.recording_finished_at or time.time()
    seconds = max(finished - started, 0.0)
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
    what = "Leak" if mem.kind == "leak" else "Allocation"
    title = f"{what} profile of {the_plan.target}"
    how = "outstanding at the end" if mem.kind == "leak" else "allocated"
    views: tuple[tuple[Weight, dict[str, int]], ...] = (("bytes", by_bytes), ("count", by_count))
    java = meta.sampling.get("java", "") if meta.sampling else ""
    java = f"; Java methods: {java}" if java else ""
    for weight, stacks in views:
        unit = "bytes" if weight == "bytes" else "allocations"
        subtitle = (
            f"{seconds:.1f} s, {when}; widths: {unit} {how}, {sum(stacks.values())} in all; "
            f"sampling: {mem.sampling}{java}"
        )
        name = "bytes" if weight == "bytes" else "allocations"
        write_atomic(job.artifact(weighted(FOLDED, weight)), format_folded(stacks))
        write_atomic(
            job.artifact(weighted(SVG, weight)),
            render_svg(stacks, title=title, subtitle=subtitle, count_name=name),
        )
        write_atomic(
            job.artifact(weighted(SPEEDSCOPE, weight)),
            json.dumps(
                to_speedscope(
                    stacks,
                    name=f"{title} ({subtitle})",
                    unit="bytes" if weight == "bytes" else "none",
                )
            ),
        )
    write_atomic(
        job.artifact(PPROF),
        to_memory_pprof(
            by_bytes,
            by_count,
            inuse=mem.kind == "leak",
            duration_ns=round(seconds * 1e9),
            time_ns=round(started * 1e9),
        ),
    )


def require_weight(job: ProfileJob, weight: Weight) -> None:
    """409 for ``weight=count`` on a profile that has no second weight."""
    if weight == "count" and job.params.get("type", "cpu") not in ("alloc", "leak"):
        raise Conflict(
            f"profile {job.id} is {job.params.get('type', 'cpu')}: weight=count applies to "
            "alloc and leak profiles (their outputs are weighted by bytes by default)"
        )
