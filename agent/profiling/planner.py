"""The pure planner of a profile: request + facts about the targets -> the tool's argv.

CPU profiles (``type: cpu``, the default) run ``perf record``; off-CPU profiles
(``type: off-cpu``) run the bpftrace program of :mod:`agent.profiling.offcpu`.
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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from agent.errors import Conflict, Invalid, Unavailable
from agent.profiling import offcpu

CallGraph = Literal["auto", "fp", "dwarf"]
Profiler = Literal["auto", "perf", "py-spy"]
ProfileType = Literal["cpu", "off-cpu"]
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
        "wait off CPU (blocked, sleeping, preempted), weighted by that time (bpftrace)",
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
    offcpu_max_stacks_per_s: int = offcpu.DEFAULT_MAX_STACKS_PER_S
    """Off-CPU cost bound: switches recorded per second before 1-in-w sampling starts."""


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


class ProfilerChoice(BaseModel):
    """Which profiler records one target, and why."""

    pid: int
    profiler: Literal["perf", "py-spy"]
    reason: str


class PySpyRun(BaseModel):
    """One py-spy recording: a Python target sampled from the interpreter's memory."""

    pid: int
    comm: str
    argv: list[str]
    output: str = Field(description="where py-spy writes its raw (folded) stacks")


class Plan(BaseModel):
    """What will run, and why: the dry-run answer and part of the profile's metadata."""

    argv: list[str] = Field(description="perf record's command; empty when py-spy records all")
    type: ProfileType = "cpu"
    program: str | None = Field(default=None, description="off-cpu: the bpftrace program")
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


_JIT_HINT = {
    "python": "Python >= 3.12 writes one with PYTHONPERFSUPPORT=1 (or -X perf); py-spy "
    "(profiler auto or py-spy) needs none",
    "java": "the agent asks the JVM for one (jattach PID jcmd Compiler.perfmap, JDK >= 17) "
    "when jattach is installed; otherwise run the JVM with a perf-map agent",
    "node": "start node with --perf-basic-prof (NODE_OPTIONS; the webhook sets it)",
    "dotnet": "set DOTNET_PerfMapEnabled=1",
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
) -> Plan:
    """Build the ``perf record`` (or off-CPU bpftrace) command for ``request`` on ``targets``,
    and the py-spy commands of its Python targets.

    ``pid_ns``: the inode number of the agent's PID namespace (off-CPU targets are
    selected by their pid there). ``pyspy``: the py-spy executable, None when it is
    missing. ``jattach``: whether JVM perf maps can be asked for. py-spy writes its
    raw stacks next to ``output`` (``py-spy-PID.txt``).
    """
    if request.type == "off-cpu":
        if request.profiler == "py-spy" or request.python_native:
            raise Invalid(
                "off-cpu profiles are recorded by bpftrace: profiler py-spy and "
                "python_native apply to cpu profiles",
                field="profiler",
            )
        return _plan_offcpu(request, targets=targets, target=target, limits=limits, pid_ns=pid_ns)
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


def _plan_offcpu(
    request: ProfileRequest,
    *,
    targets: list[TargetFacts],
    target: str,
    limits: Limits,
    pid_ns: int,
) -> Plan:
    if request.frequency_hz is not None:
        raise Invalid(
            "frequency_hz applies to cpu profiles only: an off-cpu profile records every "
            "switch off the CPU",
            field="frequency_hz",
        )
    if request.call_graph == "dwarf":
        raise Invalid(
            "off-cpu stacks are walked in the kernel with frame pointers: call_graph may be "
            "auto or fp",
            field="call_graph",
        )
    duration = _duration(request, limits)
    if not targets:
        raise Invalid("there is no process to profile", field="pid")
    pids = sorted({t.pid for t in targets})
    text = offcpu.program(
        pids=pids,
        pid_ns=pid_ns,
        duration_s=duration,
        max_stacks_per_s=limits.offcpu_max_stacks_per_s,
    )
    return Plan(
        argv=offcpu.argv(text),
        type="off-cpu",
        program=text,
        pids=pids,
        target=target,
        duration_s=duration,
        frequency_hz=0,
        call_graph="fp",
        call_graph_reason="off-cpu stacks: BPF walks user stacks by frame pointers",
        timeout_s=duration + limits.timeout_slack_s,
        unresolved=expected_unresolved(targets, mode="fp"),
    )
