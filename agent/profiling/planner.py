"""The pure planner of a profile: request + facts about the targets -> the tool's argv.

CPU profiles (``type: cpu``, the default) run ``perf record``; off-CPU profiles
(``type: off-cpu``) run the bpftrace program of :mod:`agent.profiling.offcpu`.

Nothing here touches the system: the service gathers :class:`TargetFacts` from
/proc, the planner decides (validated bounds, call-graph mode and why, the exact
``perf record`` argument list, what will not resolve and why), and
``POST /profiles?dry_run=true`` shows the resulting :class:`Plan` unchanged.

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

from agent.errors import Invalid
from agent.profiling import offcpu

CallGraph = Literal["auto", "fp", "dwarf"]
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


class ProfileRequest(BaseModel):
    """The body of ``POST /profiles``. At most one of pid, pids, container; none = the pod."""

    model_config = ConfigDict(extra="forbid")

    type: ProfileType = Field(
        default="cpu",
        description="cpu: where time is spent on CPU (perf samples); off-cpu: where threads "
        "wait off CPU (blocked, sleeping, preempted), weighted by that time (bpftrace)",
    )
    pid: Pid | None = None
    pids: Annotated[list[Pid], Field(min_length=1, max_length=MAX_PIDS)] | None = None
    container: ContainerName | None = None
    duration_s: float | None = Field(
        default=None, description="default from settings (10 s); bounded by the maximum"
    )
    frequency_hz: int | None = Field(default=None, description="cpu only: default 99 Hz; bounded")
    call_graph: CallGraph = "auto"


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


class Plan(BaseModel):
    """What will run, and why: the dry-run answer and part of the profile's metadata."""

    argv: list[str]
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


_JIT_HINT = {
    "python": "Python >= 3.12 writes one with PYTHONPERFSUPPORT=1 (or -X perf)",
    "java": "run the JVM with a perf-map agent (e.g. -agentpath:libperfmap.so)",
    "node": "start node with --perf-basic-prof",
    "dotnet": "set DOTNET_PerfMapEnabled=1",
}


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


def expected_unresolved(targets: list[TargetFacts], *, mode: str = "fp") -> list[str]:
    """Why some frames will show as ``[unknown]`` (or be missing), known before recording."""
    out: list[str] = []
    for t in targets:
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
        if t.stripped:
            out.append(
                f"pid {t.pid} ({t.comm}): {t.exe} is stripped (no .symtab, no debug info): "
                "only its exported symbols resolve, other frames show as [unknown]"
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
) -> Plan:
    """Build the ``perf record`` (or off-CPU bpftrace) command for ``request`` on ``targets``.

    ``pid_ns``: the inode number of the agent's PID namespace (off-CPU targets are
    selected by their pid there).
    """
    if request.type == "off-cpu":
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
    mode, reason = choose_call_graph(request.call_graph, targets)
    pids = sorted({t.pid for t in targets})
    call_graph = ["--call-graph", f"dwarf,{DWARF_STACK_BYTES}"] if mode == "dwarf" else ["-g"]
    argv = [
        "perf",
        "record",
        "-F",
        str(freq),
        *call_graph,
        "-p",
        ",".join(str(p) for p in pids),
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
        unresolved=expected_unresolved(targets, mode=mode),
    )


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
