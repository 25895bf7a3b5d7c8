"""The pure planner of a profile: request + facts about the targets -> the tool's argv.

CPU profiles (``type: cpu``, the default) run ``perf record``; off-CPU profiles
(``type: off-cpu``) run perf on ``sched:sched_switch`` with DWARF unwinding, or the
bpftrace program of :mod:`agent.profiling.offcpu_fold` (frame pointers), chosen per target
by :func:`choose_offcpu_unwinding`, side by side when the targets differ.
Python targets of a CPU profile are sampled by py-spy instead (whole Python
stacks read from the interpreter's memory): :func:`choose_profilers` decides per
process and says why, and both kinds of recording run side by side.

Nothing here touches the system: the service gathers :class:`TargetFacts` from
/proc, the planner decides (validated bounds, call-graph mode and why, the exact
``perf record`` argument list, what will not resolve and why), and
``POST /profiles?dry_run=true`` shows the resulting :class:`Plan` unchanged.

Profiler rule for ``auto`` (documented in docs/profiling.md): py-spy for every
CPython process when py-spy is installed (perf sees only the innermost Python
function, and nothing Python at all without perf support), perf for the rest.
``profiler: perf`` keeps perf for everything; ``profiler: py-spy`` insists on py-spy
(a 409 names the targets that are not Python).

Call-graph rule for ``auto`` (documented in docs/profiling.md):

* ``dwarf`` when a target is Python >= 3.12 with a perf map (the perf trampoline:
  the interpreter has no frame pointers, so frame-pointer stacks stop inside
  libpython and no Python function would show), or when a native target's
  executable was seen built without frame pointers (:attr:`TargetFacts.frame_pointers`
  is False);
* ``fp`` otherwise: cheap (8 bytes per frame, no stack copies), and right for Go,
  for code built with ``-fno-omit-frame-pointer`` and for JITs that keep frame
  pointers (Node, .NET, Java with -XX:+PreserveFramePointer).

Off-CPU unwinding rule for ``auto`` (docs/profiling.md): a thread leaves the CPU
inside a system call, and nearly every program makes its system calls through libc,
which has no frame pointers: a frame-pointer walk from there skips the function that
called libc (``main;clock_nanosleep``, without ``wait_for_disk``). So ``dwarf``
(perf) for every target but Go; ``fp`` (bpftrace, cheaper per switch) for Go, which
keeps frame pointers and makes its system calls without libc; ``fp`` for all, said
in the plan, when perf cannot record tracepoints here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from agent import procfs
from agent.errors import Conflict, Invalid, Unavailable
from agent.profiling import alloc, memplan, offcpu_fold, pyalloc, pymem

CallGraph = Literal["auto", "fp", "dwarf"]
Profiler = Literal["auto", "perf", "py-spy"]
ProfileType = Literal["cpu", "off-cpu", "alloc", "leak"]
Runtime = Literal["python", "java", "node", "dotnet", "go", "native"]
OutputFormat = Literal["svg", "folded", "speedscope", "pprof"]

PID_MAX = 4_194_304  # the kernel's upper bound for pid_max (PID_MAX_LIMIT on 64-bit)
MAX_PIDS = 256
DWARF_STACK_BYTES = 16384
"""User stack copied per sample in dwarf mode: deep enough for Python's interpreter
frames, small enough to keep perf.data and its unwinding time in check."""

ContainerName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")]
Pid = Annotated[int, Field(ge=1, le=PID_MAX)]


class Targets(BaseModel):
    """What to watch, as every request names it: at most one of pid, pids, container;
    none of them = the whole pod (the agent excluded)."""

    model_config = ConfigDict(extra="forbid")

    pid: Pid | None = None
    pids: Annotated[list[Pid], Field(min_length=1, max_length=MAX_PIDS)] | None = None
    container: ContainerName | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Targets:
        if sum(x is not None for x in (self.pid, self.pids, self.container)) > 1:
            raise ValueError("give at most one of pid, pids, container (none = the whole pod)")
        return self


class ProfileOptions(BaseModel):
    """How to profile, whatever the target: the body of ``POST /profiles`` without its
    target, which is also what a trigger records (``POST /triggers``'s ``profile``)."""

    model_config = ConfigDict(extra="forbid")

    type: ProfileType = Field(
        default="cpu",
        description="cpu: where time is spent on CPU (perf samples); off-cpu: where threads "
        "wait off CPU (blocked, sleeping, preempted), weighted by that time (bpftrace); "
        "alloc: where the C allocator is called, weighted by bytes (bpftrace uprobes); "
        "leak: allocations still outstanding at the end, weighted by bytes",
    )
    duration_s: float | None = Field(
        default=None, description="default from settings (10 s); bounded by the maximum"
    )
    frequency_hz: int | None = Field(default=None, description="cpu only: default 99 Hz; bounded")
    call_graph: CallGraph = "auto"
    profiler: Profiler = Field(
        default="auto",
        description="auto: py-spy for Python processes (whole Python stacks), perf for the "
        "rest; perf or py-spy force one (py-spy: every target must be Python)",
    )
    sample_period: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="alloc/leak: one allocation smaller than 64 KiB in this many is recorded "
        "(weighted as many times; larger ones all are); default 16, 1 = every one",
    )
    max_outstanding: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="leak: sampled allocations tracked at once (the bounded map; past it new "
        "ones are counted as dropped); default 16384",
    )
    python_frames: int | None = Field(
        default=None,
        ge=0,
        le=128,
        description="leak and alloc, Python processes: Python frames kept per allocation "
        "(leak: by tracemalloc) or per sample (alloc: by tracecar's sampler, CPython 3.9+); "
        "default 16 (tracemalloc's cost per allocation grows with it: "
        "bench/python_memory_bench.py); 0: no Python frames, the C-allocator view "
        "(bpftrace) as for other runtimes",
    )
    python_native: bool = Field(
        default=False,
        description="py-spy only: mixed stacks, the native frames of C extensions and the "
        "interpreter under the Python ones. It pauses the process at each sample "
        "(see docs/profiling.md for the measured cost)",
    )


class ProfileRequest(ProfileOptions):
    """The body of ``POST /profiles``. At most one of pid, pids, container; none = the pod."""

    pid: Pid | None = None
    pids: Annotated[list[Pid], Field(min_length=1, max_length=MAX_PIDS)] | None = None
    container: ContainerName | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    default_duration_s: float
    max_duration_s: float
    default_frequency_hz: int
    max_frequency_hz: int
    timeout_slack_s: float
    offcpu_max_stacks_per_s: int = offcpu_fold.DEFAULT_MAX_STACKS_PER_S
    """Off-CPU cost bound: switches recorded per second before 1-in-w sampling starts."""
    offcpu_max_dwarf_stacks_per_s: int = offcpu_fold.DEFAULT_MAX_DWARF_STACKS_PER_S
    """The same bound for the DWARF (perf) recorder, whose stacks cost more: above it
    one switch-out in ``period`` gets a stack, weighted ``period`` times."""
    python_alloc_interval_bytes: int = pyalloc.DEFAULT_INTERVAL_BYTES
    """alloc profiles of CPython: bytes allocated per sample of tracecar's sampler."""


@dataclass(frozen=True, slots=True)
class TargetFacts:
    """What the planner needs to know about one target process (gathered from /proc)."""

    pid: int
    comm: str
    container: str
    runtime: Runtime
    runtime_version: str | None = None
    perf_map: bool = False
    exe: str | None = None
    stripped: bool = False
    frame_pointers: bool | None = None
    """False when the executable was seen built without frame pointers; None = unknown."""
    runtime_flags: tuple[str, ...] = ()
    """The profiling flags the runtime was started with (its command line and its
    NODE_OPTIONS / JAVA_TOOL_OPTIONS / PYTHONPERFSUPPORT), as far as they matter here."""
    switches_per_s: float | None = None
    """off-cpu: how often its threads left the CPU just before planning; None = unknown."""


class ProfilerChoice(BaseModel):
    """Which profiler records one target, and why."""

    pid: int
    profiler: Literal["perf", "py-spy"]
    reason: str


class UnwindChoice(BaseModel):
    """off-cpu: how one target's stacks are unwound, by which tool, and why."""

    pid: int
    call_graph: Literal["fp", "dwarf"]
    tool: Literal["bpftrace", "perf"]
    reason: str
    fallback: bool = Field(
        default=False, description="fp only because perf cannot record here (said in notes)"
    )


class PySpyRun(BaseModel):
    """One py-spy recording: a Python target sampled from the interpreter's memory."""

    pid: int
    comm: str
    argv: list[str]
    output: str = Field(description="where py-spy writes its raw (folded) stacks")


class Plan(BaseModel):
    """What will run, and why: the dry-run answer and part of the profile's metadata."""

    argv: list[str] = Field(
        description="perf record's command; empty when py-spy records all (cpu) or when "
        "bpftrace records all (off-cpu)"
    )
    type: ProfileType = "cpu"
    program: str | None = Field(default=None, description="off-cpu: the bpftrace program")
    bpftrace_argv: list[str] = Field(
        default_factory=list,
        description="off-cpu: bpftrace's command, for the targets unwound by frame pointers",
    )
    unwinding: list[UnwindChoice] = Field(
        default_factory=list,
        description="off-cpu: each target's unwinding (fp: bpftrace, dwarf: perf), and why",
    )
    dwarf_period: int = Field(
        default=1,
        description="off-cpu, dwarf: one switch-out in this many gets a stack (weighted "
        "as many times); 1 = every one",
    )
    pids: list[int]
    target: str = Field(description="what is profiled, in words")
    duration_s: float
    frequency_hz: int = Field(description="cpu: samples per second; off-cpu: 0 (every switch)")
    call_graph: Literal["fp", "dwarf"]
    call_graph_reason: str
    timeout_s: float
    unresolved: list[str] = Field(
        description="frames expected to show as [unknown], and why (before recording)"
    )
    profilers: list[ProfilerChoice] = Field(
        default_factory=list, description="the profiler of each target, and why"
    )
    py_spy: list[PySpyRun] = Field(
        default_factory=list, description="the py-spy recordings (Python targets)"
    )
    memory: memplan.MemoryPlan | None = Field(
        default=None, description="alloc/leak: the allocators probed, the sampling, the notes"
    )


class ProfileDryRun(BaseModel):
    """``POST /profiles?dry_run=true``: the plan, with nothing run."""

    dry_run: Literal[True]
    plan: Plan


_PYSPY_HINT = "; py-spy (profiler auto or py-spy) needs none"
_JIT_HINT = {
    "python": "Python >= 3.12 writes one with PYTHONPERFSUPPORT=1 (or -X perf)" + _PYSPY_HINT,
    "java": "the agent asks the JVM for one (jattach PID jcmd Compiler.perfmap, JDK >= 17) "
    "when jattach is installed; otherwise run the JVM with a perf-map agent",
    "node": "start node with --perf-basic-prof (NODE_OPTIONS; the webhook sets it)",
    "dotnet": "set COMPlus_PerfMapEnabled=1 (any version; DOTNET_PerfMapEnabled=1 from .NET 5)",
}
JAVA_FRAME_POINTERS = "-XX:+PreserveFramePointer"
NODE_PERF_MAP = "--perf-basic-prof"
NODE_INTERPRETED = "--interpreted-frames-native-stack"


def _py_version(v: str | None) -> tuple[int, int] | None:
    if not v:
        return None
    try:
        major, minor = v.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def choose_call_graph(requested: CallGraph, targets: list[TargetFacts]) -> tuple[str, str]:
    """The call-graph mode and the reason for it (see the module docstring)."""
    if requested != "auto":
        return requested, f"{requested} requested"
    for t in targets:
        ver = _py_version(t.runtime_version)
        if t.runtime == "python" and ver is not None and ver >= (3, 12) and t.perf_map:
            return "dwarf", (
                f"pid {t.pid} is Python {t.runtime_version} with a perf map (perf trampoline): "
                "its interpreter has no frame pointers, so only DWARF unwinding reaches "
                "the Python frames"
            )
    for t in targets:
        if t.frame_pointers is False:
            return "dwarf", f"pid {t.pid} ({t.exe or t.comm}) is built without frame pointers"
    return "fp", "no target needs DWARF unwinding: frame pointers are cheaper"


def choose_profilers(
    request: ProfileRequest, targets: list[TargetFacts], *, pyspy: str | None
) -> list[ProfilerChoice]:
    """The profiler of each target and why (see the module docstring)."""
    if request.profiler == "perf":
        if request.python_native:
            raise Invalid(
                "python_native applies to py-spy: use profiler auto or py-spy",
                field="python_native",
            )
        return [
            ProfilerChoice(pid=t.pid, profiler="perf", reason="perf requested") for t in targets
        ]
    if request.profiler == "py-spy":
        others = [t for t in targets if t.runtime != "python"]
        if others:
            raise Conflict(
                "py-spy profiles CPython processes only, and "
                + ", ".join(f"pid {t.pid} ({t.comm}) is {t.runtime}" for t in others[:10])
                + ": use profiler auto (py-spy for the Python processes, perf for the rest) "
                "or target the Python processes only"
            )
        if pyspy is None:
            raise Unavailable(
                "py-spy is not installed in the agent (it comes with the agent's package, "
                "pip install py-spy); use profiler perf meanwhile"
            )
    out: list[ProfilerChoice] = []
    for t in targets:
        if t.runtime == "python" and pyspy is not None:
            out.append(
                ProfilerChoice(
                    pid=t.pid,
                    profiler="py-spy",
                    reason=(
                        f"Python {t.runtime_version or ''}".rstrip()
                        + ": py-spy reads the interpreter's own frames, so whole Python "
                        "stacks (function, file, line) show, with or without perf support"
                        + ("; with native frames (python_native)" if request.python_native else "")
                    ),
                )
            )
        elif t.runtime == "python":
            out.append(
                ProfilerChoice(
                    pid=t.pid,
                    profiler="perf",
                    reason="py-spy is not installed in the agent: perf sees the interpreter, "
                    "and Python functions only through a perf map",
                )
            )
        else:
            out.append(
                ProfilerChoice(
                    pid=t.pid, profiler="perf", reason=f"{t.runtime} code: perf samples it"
                )
            )
    return out


def expected_unresolved(
    targets: list[TargetFacts], *, mode: str = "fp", jattach: bool = False
) -> list[str]:
    """Why some frames will show as ``[unknown]`` (or be missing), known before recording.

    Only the targets perf records belong here: py-spy's stacks have no unresolved frames.
    """
    out: list[str] = []
    for t in targets:
        if t.runtime == "java":
            out.extend(_java_notes(t, jattach=jattach))
            continue
        if t.runtime == "node":
            out.extend(_node_notes(t))
            continue
        if t.runtime == "dotnet":
            out.extend(_dotnet_notes(t, mode=mode))
            continue
        if t.runtime == "go" and mode == "fp":
            out.append(
                f"pid {t.pid} ({t.comm}, go): Go's frameless leaf functions (no call, nothing "
                "on the stack) push no frame pointer, so a frame-pointer walk skips their "
                "immediate caller; post-processing puts it back (the pclntab's frame sizes "
                "say which PCs have no frame) when the call into that caller is direct, and "
                "cannot when it is indirect (a function value, an interface method, "
                "runtime.main calling main.main)"
            )
        ver = _py_version(t.runtime_version)
        if t.runtime == "python" and ver is not None and ver >= (3, 12) and t.perf_map:
            # Seen with perf 6.1 and CPython 3.12: the trampoline that names each
            # Python frame has no unwind information, so unwinding stops there.
            out.append(
                f"pid {t.pid} ({t.comm}): Python's perf trampoline has no unwind information, "
                "so each stack ends at its innermost Python function (py::NAME:FILE) without "
                "its Python callers"
                + ("" if mode == "dwarf" else "; with fp call graphs no Python frame shows")
            )
        jit = t.runtime in _JIT_HINT
        if t.runtime == "python":
            ver = _py_version(t.runtime_version)
            jit = ver is not None and ver >= (3, 12)
        if jit and not t.perf_map:
            out.append(
                f"pid {t.pid} ({t.comm}, {t.runtime}) has no perf map /tmp/perf-{t.pid}.map in "
                f"its /tmp: its JIT or interpreted frames will be [unknown] or interpreter "
                f"frames; {_JIT_HINT[t.runtime]}"
            )
        if t.stripped and t.runtime != "go":
            # Go names come from .gopclntab, stripped or not (agent.symbolize).
            out.append(
                f"pid {t.pid} ({t.comm}): {t.exe} is stripped (no .symtab, no debug info): "
                "its names come from a separate debug file if one is found (the build-id "
                "path or .gnu_debuglink in its container, or debuginfod when "
                "TRACECAR_AGENT_DEBUGINFOD_URLS is set); otherwise only its exported "
                "symbols resolve and other frames show as [unknown] (the profile's "
                "symbols say which)"
            )
    return out


def _java_notes(t: TargetFacts, *, jattach: bool) -> list[str]:
    out: list[str] = []
    if JAVA_FRAME_POINTERS not in t.runtime_flags:
        out.append(
            f"pid {t.pid} ({t.comm}, java): the JVM was started without "
            f"{JAVA_FRAME_POINTERS}: its JIT-compiled frames keep no frame pointer, so "
            "stacks are cut short at compiled Java methods and their callers are missing; "
            f"restart it with JAVA_TOOL_OPTIONS={JAVA_FRAME_POINTERS} (the webhook sets it)"
        )
    if not t.perf_map and not jattach:
        out.append(
            f"pid {t.pid} ({t.comm}, java) has no perf map and jattach is not installed: "
            f"JIT-compiled methods will show as [perf-{t.pid}.map] or [unknown]; "
            + _JIT_HINT["java"]
        )
    return out


def _dotnet_notes(t: TargetFacts, *, mode: str) -> list[str]:
    """.NET: the perf map names JIT'd methods; the knob's spelling depends on the version."""
    out: list[str] = []
    version = t.runtime_version
    wanted = procfs.dotnet_env(version, "PerfMapEnabled")
    what = f".NET {version}" if version else ".NET (version unknown)"
    if not t.perf_map:
        wrong = [
            f for f in t.runtime_flags if f.startswith("DOTNET_PerfMapEnabled=") and f != wanted
        ]
        said = (
            f"; it has {wrong[0]}, a spelling {what} does not read"
            if wrong and wanted.startswith("COMPlus_")
            else ""
        )
        out.append(
            f"pid {t.pid} ({t.comm}, {what}) has no perf map /tmp/perf-{t.pid}.map in its "
            f"/tmp: its JIT-compiled (managed) methods will show as [unknown]{said}; set "
            f"{wanted}=1 in its environment and restart it (the runtime reads it at start; "
            "the webhook sets both spellings with tracecar.dev/runtime-symbols)"
        )
    minopts = any(
        f in (f"{p}JITMinOpts=1" for p in ("DOTNET_", "COMPlus_")) for f in t.runtime_flags
    )
    if mode == "fp" and not minopts:
        out.append(
            f"pid {t.pid} ({t.comm}, {what}): methods the JIT optimises keep no frame "
            "pointer, so a frame-pointer stack may skip their callers; mark callers "
            "[MethodImpl(MethodImplOptions.NoOptimization)] or run with "
            f"{procfs.dotnet_env(version, 'JITMinOpts')}=1 (slower) for whole chains"
        )
    return out


def _node_notes(t: TargetFacts) -> list[str]:
    out: list[str] = []
    if not t.perf_map and NODE_PERF_MAP not in t.runtime_flags:
        out.append(
            f"pid {t.pid} ({t.comm}, node) was started without {NODE_PERF_MAP}: its "
            "JavaScript functions will be [unknown] or V8 builtins; " + _JIT_HINT["node"]
        )
    elif NODE_INTERPRETED not in t.runtime_flags:
        out.append(
            f"pid {t.pid} ({t.comm}, node) was started without {NODE_INTERPRETED}: "
            "functions V8 has not compiled yet show as InterpreterEntryTrampoline instead "
            "of their names (only JIT-compiled ones are named)"
        )
    return out


def in_range(value: float, *, low: float, high: float, field: str, unit: str) -> float:
    """``value``, or a 422 naming ``field`` and the range allowed."""
    if not low <= value <= high:
        raise Invalid(
            f"{field} must be between {low:g} and {high:g}{' ' + unit if unit else ''} "
            f"(got {value:g})",
            field=field,
            allowed={"min": low, "max": high},
        )
    return value


def _bounded(
    value: float | None, *, default: float, low: float, high: float, field: str, unit: str
) -> float:
    return in_range(default if value is None else value, low=low, high=high, field=field, unit=unit)


def _duration(request: ProfileRequest, limits: Limits) -> float:
    return _bounded(
        request.duration_s,
        default=limits.default_duration_s,
        low=0.1,
        high=limits.max_duration_s,
        field="duration_s",
        unit="seconds",
    )


def plan(
    request: ProfileRequest,
    *,
    targets: list[TargetFacts],
    target: str,
    limits: Limits,
    output: Path,
    pid_ns: int = 0,
    pyspy: str | None = None,
    jattach: bool = False,
    offcpu_dwarf_unavailable: str | None = None,
    memory_targets: list[memplan.MemoryTargetFacts] | None = None,
    bpftrace_offsets: bool = False,
) -> Plan:
    """Build the ``perf record`` (or off-CPU bpftrace) command for ``request`` on ``targets``,
    and the py-spy commands of its Python targets.

    ``pid_ns``: the inode number of the agent's PID namespace (off-CPU targets are
    selected by their pid there). ``pyspy``: the py-spy executable, None when it is
    missing. ``jattach``: whether JVM perf maps can be asked for. py-spy writes its
    raw stacks next to ``output`` (``py-spy-PID.txt``). ``offcpu_dwarf_unavailable``:
    why perf cannot record an off-CPU profile here (None: it can). ``memory_targets``:
    alloc/leak, each target's allocator (found by the service). ``bpftrace_offsets``:
    bpftrace places uprobes at an offset into a function (leak: free past its entry).
    """
    if request.type in memplan.MEMORY_TYPES:
        return _plan_memory(
            request,
            targets=memory_targets or [],
            target=target,
            limits=limits,
            pid_ns=pid_ns,
            probe_offsets=bpftrace_offsets,
        )
    if request.sample_period is not None or request.max_outstanding is not None:
        raise Invalid(
            "sample_period and max_outstanding apply to alloc and leak profiles",
            field="sample_period" if request.sample_period is not None else "max_outstanding",
        )
    if request.python_frames is not None:
        raise Invalid("python_frames applies to alloc and leak profiles", field="python_frames")
    if request.type == "off-cpu":
        if request.profiler == "py-spy" or request.python_native:
            raise Invalid(
                "off-cpu profiles are recorded by perf and bpftrace: profiler py-spy and "
                "python_native apply to cpu profiles",
                field="profiler",
            )
        return _plan_offcpu(
            request,
            targets=targets,
            target=target,
            limits=limits,
            pid_ns=pid_ns,
            output=output,
            dwarf_unavailable=offcpu_dwarf_unavailable,
        )
    duration = _duration(request, limits)
    freq = int(
        _bounded(
            request.frequency_hz,
            default=limits.default_frequency_hz,
            low=1,
            high=limits.max_frequency_hz,
            field="frequency_hz",
            unit="Hz",
        )
    )
    if not targets:
        raise Invalid("there is no process to profile", field="pid")
    choices = choose_profilers(request, targets, pyspy=pyspy)
    by_pyspy = {c.pid for c in choices if c.profiler == "py-spy"}
    perf_targets = [t for t in targets if t.pid not in by_pyspy]
    runs = [
        PySpyRun(
            pid=t.pid,
            comm=t.comm,
            argv=pyspy_argv(
                pyspy=pyspy or "py-spy",
                pid=t.pid,
                rate_hz=freq,
                native=request.python_native,
                output=output.with_name(f"py-spy-{t.pid}.txt"),
            ),
            output=str(output.with_name(f"py-spy-{t.pid}.txt")),
        )
        for t in sorted(targets, key=lambda t: t.pid)
        if t.pid in by_pyspy
    ]
    if perf_targets:
        mode, reason = choose_call_graph(request.call_graph, perf_targets)
    else:
        mode, reason = "fp", "no target is recorded by perf (py-spy reads Python's own stacks)"
    pids = sorted({t.pid for t in targets})
    perf_pids = sorted({t.pid for t in perf_targets})
    argv: list[str] = []
    if perf_pids:
        call_graph = ["--call-graph", f"dwarf,{DWARF_STACK_BYTES}"] if mode == "dwarf" else ["-g"]
        argv = [
            "perf",
            "record",
            "-F",
            str(freq),
            *call_graph,
            "-p",
            ",".join(str(p) for p in perf_pids),
            "-o",
            str(output),
            "--",
            "sleep",
            f"{duration:g}",
        ]
    return Plan(
        argv=argv,
        pids=pids,
        target=target,
        duration_s=duration,
        frequency_hz=freq,
        call_graph="dwarf" if mode == "dwarf" else "fp",
        call_graph_reason=reason,
        timeout_s=duration + limits.timeout_slack_s,
        unresolved=expected_unresolved(perf_targets, mode=mode, jattach=jattach),
        profilers=choices,
        py_spy=runs,
    )


def pyspy_argv(*, pyspy: str, pid: int, rate_hz: int, native: bool, output: Path) -> list[str]:
    """``py-spy record`` of one process until stopped (SIGINT ends it and writes the file).

    No ``--duration``: py-spy takes whole seconds only, so the recorder stops it at the
    planned time. ``--threads`` keeps the thread id of each stack (the folded view's
    ``tid`` option), ``--full-filenames`` the whole path of each frame's file.
    ``--nonblocking`` reads the interpreter without pausing it (the cheap default);
    ``--native`` must pause it to unwind the native frames, and excludes it.
    """
    return [
        pyspy,
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--rate",
        str(rate_hz),
        "--threads",
        "--full-filenames",
        *(["--native"] if native else ["--nonblocking"]),
        "--output",
        str(output),
    ]


_OFFCPU_DWARF_WHY: dict[str, str] = {
    "native": "its blocking calls go through libc, which has no frame pointers: only "
    "DWARF unwinding (.eh_frame) reaches the function that called libc",
    "python": "the interpreter and libc have no frame pointers: DWARF unwinding reaches "
    "the C function that blocked (time_sleep, sock_recv...) and the interpreter's frames; "
    "Python function names show only as far as a perf map names them (innermost)",
    "java": "the JVM blocks in libc and libjvm, without frame pointers: DWARF unwinding "
    "names them (the walk ends at the first JIT-compiled frame, which has no unwind "
    "information; call_graph fp walks JIT frames with -XX:+PreserveFramePointer instead)",
    "node": "node blocks in libc and libuv, without frame pointers: DWARF unwinding names "
    "them (the walk ends at the first JIT-compiled frame; call_graph fp walks those)",
    "dotnet": "the runtime blocks in libc and libcoreclr, without frame pointers: DWARF "
    "unwinding names them (the walk ends at the first JIT-compiled frame)",
}
_OFFCPU_GO_WHY = (
    "Go keeps frame pointers and makes its system calls without libc: the frame-pointer "
    "walk is whole, and bpftrace is cheaper per switch than perf's stack copies"
)


def choose_offcpu_unwinding(
    requested: CallGraph, targets: list[TargetFacts], *, dwarf_unavailable: str | None
) -> list[UnwindChoice]:
    """Each off-CPU target's unwinding and why (see the module docstring)."""
    out: list[UnwindChoice] = []
    for t in sorted(targets, key=lambda t: t.pid):
        if requested == "fp":
            out.append(UnwindChoice(pid=t.pid, call_graph="fp", tool="bpftrace",
                                    reason="fp requested"))  # fmt: skip
        elif requested == "dwarf":
            out.append(UnwindChoice(pid=t.pid, call_graph="dwarf", tool="perf",
                                    reason="dwarf requested"))  # fmt: skip
        elif t.runtime == "go":
            out.append(UnwindChoice(pid=t.pid, call_graph="fp", tool="bpftrace",
                                    reason=_OFFCPU_GO_WHY))  # fmt: skip
        elif dwarf_unavailable is not None:
            out.append(
                UnwindChoice(
                    pid=t.pid,
                    call_graph="fp",
                    tool="bpftrace",
                    reason=f"{t.runtime}: DWARF would be right ({_OFFCPU_DWARF_WHY[t.runtime]}), "
                    f"but perf cannot record it here ({dwarf_unavailable}): frame pointers "
                    "instead, so the frames between libc and the app's own are missing",
                    fallback=True,
                )
            )
        else:
            out.append(
                UnwindChoice(
                    pid=t.pid,
                    call_graph="dwarf",
                    tool="perf",
                    reason=f"{t.runtime}: {_OFFCPU_DWARF_WHY[t.runtime]}",
                )
            )
    return out


def _plan_offcpu(
    request: ProfileRequest,
    *,
    targets: list[TargetFacts],
    target: str,
    limits: Limits,
    pid_ns: int,
    output: Path,
    dwarf_unavailable: str | None,
) -> Plan:
    if request.frequency_hz is not None:
        raise Invalid(
            "frequency_hz applies to cpu profiles only: an off-cpu profile records every "
            "switch off the CPU",
            field="frequency_hz",
        )
    duration = _duration(request, limits)
    if not targets:
        raise Invalid("there is no process to profile", field="pid")
    if request.call_graph == "dwarf" and dwarf_unavailable is not None:
        raise Unavailable(
            f"off-cpu call_graph dwarf needs perf to record sched:sched_switch, and it cannot "
            f"here: {dwarf_unavailable}; use call_graph fp or auto (frame pointers, bpftrace)"
        )
    choices = choose_offcpu_unwinding(
        request.call_graph, targets, dwarf_unavailable=dwarf_unavailable
    )
    fp_pids = [c.pid for c in choices if c.call_graph == "fp"]
    dwarf_pids = [c.pid for c in choices if c.call_graph == "dwarf"]
    text = None
    bpftrace_argv: list[str] = []
    if fp_pids:
        text = offcpu_fold.program(
            pids=fp_pids,
            pid_ns=pid_ns,
            duration_s=duration,
            max_stacks_per_s=limits.offcpu_max_stacks_per_s,
        )
        bpftrace_argv = offcpu_fold.argv(text)
    argv: list[str] = []
    period = 1
    rate = sum(t.switches_per_s or 0.0 for t in targets if t.pid in set(dwarf_pids))
    if dwarf_pids:
        period = offcpu_fold.dwarf_period(
            rate, max_stacks_per_s=limits.offcpu_max_dwarf_stacks_per_s, duration_s=duration
        )
        argv = offcpu_fold.perf_argv(
            pids=dwarf_pids,
            output=str(output),
            duration_s=duration,
            stack_bytes=offcpu_fold.DWARF_STACK_BYTES,
            period=period,
        )
    mode: Literal["fp", "dwarf"] = "dwarf" if dwarf_pids else "fp"
    if dwarf_pids and fp_pids:
        reason = (
            f"per target: DWARF (perf) for pid(s) {', '.join(map(str, dwarf_pids))}, frame "
            f"pointers (bpftrace) for pid(s) {', '.join(map(str, fp_pids))}; see unwinding"
        )
    elif dwarf_pids:
        reason = "off-cpu stacks unwound by perf with DWARF: " + "; ".join(
            sorted({c.reason for c in choices})
        )
    else:
        reason = "off-cpu stacks walked by frame pointers in BPF: " + "; ".join(
            sorted({c.reason for c in choices})
        )
    floor = rate * offcpu_fold.DWARF_FLOOR_US_PER_SWITCH / 1e4  # percent of a core
    if dwarf_pids and floor >= 5:
        reason += (
            f"; at about {rate:,.0f} switches a second, perf's events on the targets' "
            f"threads cost about {floor:.0f}% of a core whatever the period "
            "(bench/offcpu_bench.py); call_graph fp costs a third of that or less, "
            "without the frames between libc and the app"
        )
    if period > 1:
        reason += (
            f"; the targets left the CPU about {rate:,.0f} times a second just before: "
            f"one switch-out in {period} gets a stack (weighted {period} times), the cost "
            f"bound of {limits.offcpu_max_dwarf_stacks_per_s} stacks a second and "
            f"{offcpu_fold.DWARF_MAX_RECORD_BYTES >> 20} MiB of stacks per recording"
        )
    by_pid = {t.pid: t for t in targets}
    return Plan(
        argv=argv,
        type="off-cpu",
        program=text,
        bpftrace_argv=bpftrace_argv,
        unwinding=choices,
        dwarf_period=period,
        pids=sorted(by_pid),
        target=target,
        duration_s=duration,
        frequency_hz=0,
        call_graph=mode,
        call_graph_reason=reason,
        timeout_s=duration + limits.timeout_slack_s,
        # py-spy does not record off-CPU time: its hint does not apply here.
        unresolved=[
            r.replace(_PYSPY_HINT, "")
            for r in expected_unresolved([by_pid[p] for p in fp_pids], mode="fp")
            + expected_unresolved([by_pid[p] for p in dwarf_pids], mode="dwarf")
        ],
    )


def _plan_memory(
    request: ProfileRequest,
    *,
    targets: list[memplan.MemoryTargetFacts],
    target: str,
    limits: Limits,
    pid_ns: int,
    probe_offsets: bool,
) -> Plan:
    if request.frequency_hz is not None or request.profiler != "auto" or request.python_native:
        raise Invalid(
            "frequency_hz, profiler and python_native apply to cpu profiles: an alloc or leak "
            "profile probes the C allocator with bpftrace",
            field="frequency_hz" if request.frequency_hz is not None else "profiler",
        )
    if request.call_graph == "dwarf":
        raise Invalid(
            "alloc and leak profiles walk stacks by frame pointers in BPF (call_graph auto "
            "or fp); dwarf is not available for them",
            field="call_graph",
        )
    duration = _duration(request, limits)
    if not targets:
        raise Invalid("there is no process to profile", field="pid")
    kind: Literal["alloc", "leak"] = "leak" if request.type == "leak" else "alloc"
    if request.max_outstanding is not None and kind != "leak":
        raise Invalid(
            "max_outstanding applies to leak profiles (an alloc profile tracks no address)",
            field="max_outstanding",
        )
    mem, text = memplan.plan_memory(
        kind=kind,
        python_frames=pymem.DEFAULT_FRAMES
        if request.python_frames is None
        else request.python_frames,
        python_interval=limits.python_alloc_interval_bytes,
        targets=targets,
        pid_ns=pid_ns,
        duration_s=duration,
        period=request.sample_period or alloc.DEFAULT_PERIOD,
        max_outstanding=request.max_outstanding or alloc.DEFAULT_MAX_OUTSTANDING,
        probe_offsets=probe_offsets,
    )
    # Python processes seen in Python frames (leak) are not bpftrace's: the program may be
    # empty (every target one of them), and then no bpftrace runs.
    in_python = {p.pid for p in mem.python.targets} if mem.python is not None else set()
    probed = [t.pid for t in targets if t.allocator is not None and t.pid not in in_python]
    return Plan(
        argv=[],
        type=request.type,
        program=text,
        bpftrace_argv=alloc.argv(text, pids=probed) if text else [],
        pids=sorted({*probed, *in_python}),
        target=target,
        duration_s=duration,
        frequency_hz=0,
        call_graph="fp",
        call_graph_reason="allocator stacks walked by frame pointers in BPF at the "
        "allocator's entry; the calling function, which that walk skips, is recovered from "
        "the return address at the top of the stack",
        timeout_s=duration + limits.timeout_slack_s,
        unresolved=[],
        memory=mem,
    )
