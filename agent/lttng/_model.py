"""Request and response shapes of the LTTng capability, with strict patterns.

Every value here ends up on an ``lttng`` command line (as one argv element, never
through a shell), so each is matched against a pattern that admits only what
LTTng itself accepts for it: names and wildcards, log levels of the chosen
domain, context types from a fixed list. Filter expressions are checked for
length and characters here; their grammar is LTTng's to judge (``lttng
enable-event --filter`` compiles them) and its rejection becomes a 422.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from typing_extensions import TypedDict  # pydantic's schemas need it before Python 3.12

from agent.jobs import Later, later
from agent.openapi import Echo

Domain = Literal["userspace", "python", "jul", "log4j", "kernel"]
Mode = Literal["normal", "snapshot", "live"]
State = Literal["created", "active", "stopped", "lost"]
Format = Literal["text", "json"]

#: lttng's command-line flag of each domain.
DOMAIN_FLAG: dict[str, str] = {
    "userspace": "-u",
    "python": "-p",
    "jul": "-j",
    "log4j": "-l",
    "kernel": "-k",
}

#: Log level names per domain, as ``lttng enable-event --loglevel`` spells them
#: (without the domain prefix, which lttng accepts either way).
LOGLEVELS: dict[str, tuple[str, ...]] = {
    "userspace": (
        "EMERG",
        "ALERT",
        "CRIT",
        "ERR",
        "WARNING",
        "NOTICE",
        "INFO",
        "DEBUG_SYSTEM",
        "DEBUG_PROGRAM",
        "DEBUG_PROCESS",
        "DEBUG_MODULE",
        "DEBUG_UNIT",
        "DEBUG_FUNCTION",
        "DEBUG_LINE",
        "DEBUG",
    ),
    "python": ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "NOTSET"),
    "jul": ("OFF", "SEVERE", "WARNING", "INFO", "CONFIG", "FINE", "FINER", "FINEST", "ALL"),
    "log4j": ("OFF", "FATAL", "ERROR", "WARN", "INFO", "DEBUG", "TRACE", "ALL"),
    "kernel": (),
}

#: The prefix lttng prints before each domain's level names (accepted, not needed).
_LEVEL_PREFIX = {
    "userspace": "TRACE_",
    "python": "PYTHON_",
    "jul": "JUL_",
    "log4j": "LOG4J_",
    "kernel": "",
}

#: Context types ``lttng add-context -u`` accepts for user-space channels.
Context = Literal[
    "vpid",
    "vtid",
    "vppid",
    "procname",
    "pthread_id",
    "ip",
    "vuid",
    "veuid",
    "vsuid",
    "vgid",
    "vegid",
    "vsgid",
    "cgroup_ns",
    "ipc_ns",
    "mnt_ns",
    "net_ns",
    "pid_ns",
    "time_ns",
    "user_ns",
    "uts_ns",
]

# An event name or wildcard: tracepoint names (provider:event), logger names
# (dots), ``*`` globs. No commas (lttng's list separator), no leading '-'
# (an option), no spaces or quotes.
EVENT_NAME = r"^[A-Za-z0-9_*$][A-Za-z0-9_.:*$\-]{0,255}$"
SESSION_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
# Printable ASCII only: no control characters (newlines included), at most 1 KiB.
FILTER = r"^[ -~]{1,1024}$"

EventName = Annotated[str, Field(pattern=EVENT_NAME, description="Name or wildcard, e.g. app:*")]


class EventSpec(BaseModel):
    """Events of one domain to record."""

    model_config = ConfigDict(extra="forbid")

    domain: Domain
    names: list[EventName] = Field(default_factory=lambda: ["*"], min_length=1, max_length=64)
    loglevel: str | None = Field(
        default=None,
        max_length=32,
        description="This level or more severe (see loglevel_only); names per domain.",
    )
    loglevel_only: bool = Field(default=False, description="Exactly this log level.")
    filter: str | None = Field(
        default=None, pattern=FILTER, description="LTTng filter expression, e.g. seq >= 90"
    )
    exclude: list[EventName] = Field(
        default_factory=list, max_length=32, description="Names excluded from a wildcard."
    )

    @model_validator(mode="after")
    def _check_loglevel(self) -> EventSpec:
        if self.loglevel is not None:
            allowed = LOGLEVELS[self.domain]
            level = self.loglevel.upper()
            level = level.removeprefix(_LEVEL_PREFIX[self.domain])
            if level not in allowed:
                raise ValueError(
                    f"loglevel {self.loglevel!r} is not a {self.domain} log level; "
                    f"allowed: {', '.join(allowed) or '(none)'}"
                )
            self.loglevel = level
        elif self.loglevel_only:
            raise ValueError("loglevel_only needs a loglevel")
        if self.exclude and not any("*" in n for n in self.names):
            raise ValueError("exclude only applies to wildcard names (containing '*')")
        return self


class SessionRequest(BaseModel):
    """``POST /lttng/sessions``."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, pattern=SESSION_NAME)
    preset: Literal["dotnet"] | None = Field(
        default=None,
        description="dotnet: the .NET runtime's own tracepoints (DotNETRuntime:*: GC, "
        "exceptions, JIT, thread pool), added to events; the app needs the runtime's "
        "event log on (COMPlus_EnableEventLog=1, docs/dotnet.md)",
    )
    events: list[EventSpec] = Field(default_factory=list, max_length=32)
    contexts: list[Context] = Field(default_factory=list, max_length=20)
    pids: list[Annotated[int, Field(ge=1, le=1 << 22)]] = Field(
        default_factory=list,
        max_length=64,
        description="Record only these processes (lttng track --vpid); empty: all.",
    )
    mode: Mode = "normal"
    subbuf_size: int | None = Field(
        default=None, ge=4096, le=64 << 20, description="Bytes per sub-buffer (power of two)."
    )
    num_subbuf: int | None = Field(
        default=None, ge=2, le=64, description="Sub-buffers per ring buffer (power of two)."
    )
    max_size_bytes: int | None = Field(default=None, ge=1 << 20)
    max_duration_s: float | None = Field(default=None, gt=0)
    start: bool = Field(default=False, description="Start recording right away.")

    @model_validator(mode="after")
    def _preset(self) -> SessionRequest:
        if self.preset == "dotnet":
            self.events = [*self.events, EventSpec(domain="userspace", names=["DotNETRuntime:*"])]
        if not self.events:
            raise ValueError("events: give at least one, or a preset (dotnet)")
        return self

    @field_validator("subbuf_size", "num_subbuf")
    @classmethod
    def _power_of_two(cls, v: int | None) -> int | None:
        if v is not None and v & (v - 1):
            raise ValueError(f"{v} is not a power of two (LTTng requires one)")
        return v

    @field_validator("contexts", "pids")
    @classmethod
    def _unique(cls, v: list[object]) -> list[object]:
        return list(dict.fromkeys(v))


Action = Literal["start", "stop", "rotate", "snapshot"]


class ChannelStats(TypedDict):
    name: str
    domain: str
    discarded_events: int
    lost_packets: int
    overwrite: bool
    subbuf_size: int
    num_subbuf: int


class SessionView(BaseModel):
    """An LTTng session as the API shows it (``GET /lttng/sessions/{id}``)."""

    id: str
    name: str
    lttng_name: str
    mode: Mode
    state: State
    created_at: float
    expires_at: float
    started_at: float | None
    stopped_at: float | None
    max_size_bytes: int
    size_bytes: int
    discarded_events: int | None
    lost_packets: int | None
    events: int | None
    channels: list[ChannelStats]
    snapshots: int
    rotations: int
    message: str
    request: Echo[SessionRequest] = Field(description="what was asked, with the defaults applied")


class SessionList(BaseModel):
    sessions: list[SessionView]


class SessionPlan(BaseModel):
    """``POST /lttng/sessions?dry_run=true``: the lttng commands, in order, with nothing run."""

    dry_run: Literal[True]
    lttng_name: str = Field(description="the session's name in LTTng")
    output: str = Field(description="where its trace would be written")
    commands: list[list[str]]


class Deleted(BaseModel):
    id: str
    deleted: bool


class Tracepoint(TypedDict):
    name: str
    loglevel: str | None


class ProcessTracepoints(TypedDict):
    pid: int
    name: str
    domain: str
    events: list[Tracepoint]


class Tracepoints(BaseModel):
    """``GET /lttng/tracepoints``: what the pod's registered apps offer, per process and
    domain, and the domains the daemon could not list."""

    processes: list[ProcessTracepoints]
    errors: Later[dict[str, str]] = later("domain -> why its tracepoints could not be listed")
    note: str
