"""The probes' wire formats: the request a client sends and the strict patterns it must match.

Every string here ends up in a generated bpftrace program or on a ``perf probe``
command line, so each one is checked against a narrow pattern before anything
else looks at it; a failure is a 422 naming the field and the allowed form.
"""

from __future__ import annotations

import re
from typing import Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from typing_extensions import TypedDict

from agent.jobs import Later, later
from agent.openapi import Echo

ArgType = Literal["int", "uint", "int32", "uint32", "str", "ptr"]
Mode = Literal["events", "count", "histogram"]
BackendName = Literal["bpftrace", "perf-probe"]
BackendChoice = Literal["auto", "bpftrace", "perf-probe"]
ProbeState = Literal["starting", "running", "finished", "failed"]

MAX_ARGS = 6  # x86-64 passes the first six integer arguments in registers
SYMBOL_PATTERN = r"[A-Za-z_][A-Za-z0-9_]{0,255}"
# A symbol, a symbol plus an offset, or an address (for stripped code).
FUNCTION_RE = re.compile(
    rf"^(?:{SYMBOL_PATTERN}(?:\+0x[0-9a-fA-F]{{1,8}})?|0x[0-9a-fA-F]{{1,16}})$"
)
# Namespace.Class::Method or Class.Method: a .NET (or Java) method, never an ELF symbol.
MANAGED_RE = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_`]*(?:\.[A-Za-z_][A-Za-z0-9_`]*)*(?:::|\.)[A-Za-z_.<>][A-Za-z0-9_<>]*$"
)
MANAGED_HINT = (
    "JIT-compiled methods (.NET, Java) live in anonymous memory, where uprobes cannot "
    "attach (there is no file to put the breakpoint in). What works: the runtime's own "
    "events (POST /lttng/sessions with preset dotnet, or POST /dotnet/{pid}/traces with "
    "preset exceptions or gc), uprobes on the runtime's native code (binary libcoreclr.so, "
    "e.g. function _Z8IL_ThrowP6Object counts every throw), or methods compiled ahead of "
    "time into a file (ReadyToRun/crossgen: docs/dotnet.md)"
)
# Library names as in /proc/PID/maps: "libc", "libc.so.6", "libpython3.12".
LIBRARY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")
# Absolute paths of plain characters: no quotes, spaces, colons, braces or control characters.
PATH_RE = re.compile(r"^/[A-Za-z0-9_.+@=,%/-]{0,1023}$")
CONTAINER_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$"
PROCESS_RE = r"^[A-Za-z0-9_.+:-][A-Za-z0-9_.+: -]{0,63}$"
OF_RE = rf"^(latency|retval|arg[0-{MAX_ARGS - 1}])$"
# A USDT probe as its note names it: provider and probe name (``python:function__entry``).
USDT_RE = r"^[A-Za-z_][A-Za-z0-9_]{0,63}:[A-Za-z_][A-Za-z0-9_]{0,63}$"
# A Python function's co_name: an identifier, or one of the compiler's own names.
PY_FUNCTION_RE = (
    r"^(?:[A-Za-z_][A-Za-z0-9_]{0,127}|<(?:module|lambda|listcomp|dictcomp|setcomp|genexpr)>)$"
)
# Part of a co_filename (matched as a substring): path characters only.
PY_FILE_RE = r"^[A-Za-z0-9_.+@=,%/-]{1,128}$"


def check_binary(value: str) -> str:
    """A path as the process sees it, or a library name resolved through its maps."""
    if value.startswith("/"):
        if not PATH_RE.fullmatch(value):
            raise ValueError(
                "must be an absolute path of letters, digits and _ . + @ = , % - / "
                "(no spaces, quotes, colons or control characters)"
            )
        if ".." in value.split("/"):
            raise ValueError("'..' is not allowed: the path must stay inside the process's root")
        return value
    if not LIBRARY_RE.fullmatch(value):
        raise ValueError(
            "must be an absolute path (as the process sees it) or a library name such as "
            "'libc' or 'libpython3.12' (letters, digits, _ . + -)"
        )
    return value


class ProbeRequest(BaseModel):
    """``POST /probes``: what to probe, what to capture, and for how long."""

    model_config = ConfigDict(extra="forbid")

    pid: int | None = Field(default=None, ge=1, le=1 << 22, description="Target process.")
    container: str | None = Field(
        default=None, pattern=CONTAINER_RE, description="With `process`: target by name."
    )
    process: str | None = Field(
        default=None,
        pattern=PROCESS_RE,
        description="Process name (comm or argv[0]'s base name) inside `container`.",
    )
    binary: str | None = Field(
        default=None,
        description="Path as the app sees it, or a library name (`libc`); default: the executable.",
    )
    function: str | None = Field(
        default=None,
        description="Symbol, `symbol+0xOFF`, or `0xADDRESS` (ELF virtual address).",
    )
    usdt: str | None = Field(
        default=None,
        pattern=USDT_RE,
        description="Instead of `function`: a USDT probe `provider:name` (bpftrace only).",
    )
    python_function: str | None = Field(
        default=None,
        pattern=PY_FUNCTION_RE,
        description="Instead of `function`: a Python function's name, traced through CPython's "
        "python:function__entry/function__return USDT probes (bpftrace only).",
    )
    python_file: str | None = Field(
        default=None,
        pattern=PY_FILE_RE,
        description="With `python_function`: only functions whose file name contains this.",
    )
    mode: Mode = "events"
    of: str = Field(default="latency", pattern=OF_RE, description="What a histogram is of.")
    args: list[ArgType] = Field(default_factory=list, max_length=MAX_ARGS)
    retval: bool = False
    retval_type: ArgType = Field(default="int", description="How to read the return value.")
    stack: bool = Field(default=False, description="Capture the user stack (bpftrace only).")
    duration_s: float | None = Field(default=None, gt=0)
    max_events: int | None = Field(default=None, ge=1)
    backend: BackendChoice | None = Field(default=None, description="Default: the agent's.")
    program: str | None = Field(
        default=None,
        max_length=65536,
        description="A raw bpftrace program; refused unless the operator allowed it.",
    )

    @field_validator("binary")
    @classmethod
    def _binary(cls, v: str | None) -> str | None:
        return None if v is None else check_binary(v)

    @field_validator("function")
    @classmethod
    def _function(cls, v: str | None) -> str | None:
        if v is not None and MANAGED_RE.fullmatch(v):
            raise ValueError(f"{v!r} looks like a managed method: {MANAGED_HINT}")
        if v is not None and not FUNCTION_RE.fullmatch(v):
            raise ValueError(
                "must be a symbol ([A-Za-z_][A-Za-z0-9_]*), symbol+0xOFFSET or 0xADDRESS; "
                "for other names use the address listed by GET /processes/{pid}/symbols"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ProbeRequest:
        if self.pid is None and (self.container is None or self.process is None):
            raise ValueError("name the target: `pid`, or `container` together with `process`")
        if self.pid is not None and (self.container is not None or self.process is not None):
            raise ValueError("give either `pid` or `container` + `process`, not both")
        points = [
            k for k in ("function", "usdt", "python_function") if getattr(self, k) is not None
        ]
        if self.program is not None:
            if points or self.args or self.retval or self.stack:
                raise ValueError("`program` replaces function/args/retval/stack: give one or other")
            return self
        if not points:
            raise ValueError(
                "`function`, `usdt` or `python_function` is required "
                "(or a raw `program` where allowed)"
            )
        if len(points) > 1:
            raise ValueError(f"give one of `function`, `usdt`, `python_function`, not {points}")
        if self.python_file is not None and self.python_function is None:
            raise ValueError("`python_file` filters a `python_function`: give that too")
        if self.usdt is not None or self.python_function is not None:
            self._check_usdt()
        if self.mode == "histogram" and self.of.startswith("arg"):
            n = int(self.of[3:])
            if n < len(self.args) and self.args[n] == "str":
                raise ValueError(f"`of`: {self.of} is a string; a histogram needs a number")
        return self

    def _check_usdt(self) -> None:
        what = "`usdt`" if self.usdt is not None else "`python_function`"
        if self.retval:
            raise ValueError(f"`retval`: a USDT probe point has no return value ({what})")
        if self.mode == "histogram" and self.of == "retval":
            raise ValueError(f"`of`: retval is not defined for {what}; use latency or argN")
        if self.python_function is None:
            return
        if self.args:
            raise ValueError("`args`: python_function events carry function, file and line already")
        if self.stack:
            raise ValueError(
                "`stack`: native stacks of the interpreter say little about Python code; "
                "use GET /processes/{pid}/stack (Python stacks) or POST /profiles"
            )
        if self.mode == "histogram" and self.of != "latency":
            raise ValueError("`of`: a python_function histogram is of latency (entry to return)")


class SymbolEntry(TypedDict):
    name: str
    address: str
    size: int
    kind: Literal["function", "usdt"]
    library: str


class SymbolList(TypedDict):
    pid: int
    match: str | None
    count: int
    truncated: bool
    objects: list[str]
    symbols: list[SymbolEntry]


class ProbeTarget(BaseModel):
    """What a probe is attached to (USDT and Python-function probes add their own)."""

    pid: int
    binary: str
    function: str | None
    address: str | None = Field(
        default=None, description="the ELF address, hex (not in a dry run's answer)"
    )
    usdt: str | None = None
    usdt_return: str | None = None
    python_function: str | None = None
    python_file: str | None = None


class Bucket(TypedDict):
    """One bucket of a histogram: ``min <= value <= max`` (``min`` null: the negatives)."""

    min: int | None
    max: int | None
    count: int


class ProbeSummary(TypedDict):
    """What a probe counted (its view's ``summary`` and its stream's ``end`` record).
    Keys, not nullable fields: a raw program has no ``per_pid``, and only a histogram
    probe has ``histogram`` and ``unit``."""

    hits: int
    per_pid: NotRequired[dict[str, int]]
    """Hits per target pid (as a string)."""
    histogram: NotRequired[list[Bucket]]
    unit: NotRequired[Literal["ns"] | None]
    """``ns`` for a latency histogram; null for values (a return value, an argument)."""


class BpftracePlan(BaseModel):
    """What runs for the bpftrace backend: one program, one command line."""

    program: str = Field(description="the bpftrace program (generated, or the raw one asked)")
    argv: list[str]
    env: Later[dict[str, str]] = later("USDT probes: the variables bpftrace runs with")
    note: Later[str] = later("USDT probes attached only so the interpreter takes their path")


class PerfProbePlan(BaseModel):
    """What runs for the perf-probe backend: the events added, recorded and read, then
    the command that deletes them."""

    commands: list[list[str]] = Field(
        description="perf probe (add each event), perf record, perf script, in order"
    )
    cleanup: list[str] = Field(description="perf probe --del: run whatever ends the probe")


ProbePlan = BpftracePlan | PerfProbePlan
"""A probe's plan; which one is the view's ``backend`` (the two share no field)."""


class ProbeView(BaseModel):
    """A probe as the API shows it (``GET /probes/{id}``)."""

    id: str
    state: ProbeState
    reason: str | None = Field(description="why it ended: duration, max_events, deleted...")
    error: str | None
    backend: BackendName
    backend_reason: str
    target: ProbeTarget | None = Field(description="none for a raw bpftrace program")
    request: Echo[ProbeRequest] = Field(description="what was asked, with the defaults applied")
    duration_s: float
    max_events: int
    created_at: float
    started_at: float | None
    ends_at: float | None
    finished_at: float | None
    hits: int
    events: int = Field(description="events published to readers")
    drops: int
    dropped_by_rate_limit: int
    lost_by_tracer: int
    readers: int
    summary: ProbeSummary = Field(description="hits, per pid, and a histogram if asked")
    plan: ProbePlan = Field(description="what runs: the program or the commands")
    links: dict[str, str]
    deleted: bool = Field(default=False, description="DELETE of a finished probe: forgotten")
    notes: list[str] = Field(
        default_factory=list,
        description="what the agent had to do that changes nothing asked for (perf record "
        "started again on its own start race); absent when nothing",
    )


class ProbeList(BaseModel):
    probes: list[ProbeView]


class ProbeDryRun(BaseModel):
    """``POST /probes?dry_run=true``: the plan, with nothing attached."""

    dry_run: Literal[True]
    backend: BackendName
    backend_reason: str
    target: ProbeTarget | None = Field(description="none for a raw bpftrace program")
    duration_s: float
    max_events: int
    plan: ProbePlan
