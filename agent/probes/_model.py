"""The probes' wire formats: the request a client sends and the strict patterns it must match.

Every string here ends up in a generated bpftrace program or on a ``perf probe``
command line, so each one is checked against a narrow pattern before anything
else looks at it; a failure is a 422 naming the field and the allowed form.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from typing_extensions import TypedDict

ArgType = Literal["int", "uint", "int32", "uint32", "str", "ptr"]
Mode = Literal["events", "count", "histogram"]
BackendName = Literal["bpftrace", "perf-probe"]
BackendChoice = Literal["auto", "bpftrace", "perf-probe"]
ProbeState = Literal["starting", "running", "finished", "failed"]

MAX_ARGS = 6  # x86-64 passes the first six integer arguments in registers
SYMBOL_PATTERN = r"[A-Za-z_][A-Za-z0-9_]{0,255}"
SYMBOL_RE = re.compile(rf"^{SYMBOL_PATTERN}$")
# A symbol, a symbol plus an offset, or an address (for stripped code).
FUNCTION_RE = re.compile(
    rf"^(?:{SYMBOL_PATTERN}(?:\+0x[0-9a-fA-F]{{1,8}})?|0x[0-9a-fA-F]{{1,16}})$"
)
# Library names as in /proc/PID/maps: "libc", "libc.so.6", "libpython3.12".
LIBRARY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")
# Absolute paths of plain characters: no quotes, spaces, colons, braces or control characters.
PATH_RE = re.compile(r"^/[A-Za-z0-9_.+@=,%/-]{0,1023}$")
CONTAINER_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$"
PROCESS_RE = r"^[A-Za-z0-9_.+:-][A-Za-z0-9_.+: -]{0,63}$"
OF_RE = rf"^(latency|retval|arg[0-{MAX_ARGS - 1}])$"


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
        if self.program is not None:
            if self.function is not None or self.args or self.retval or self.stack:
                raise ValueError("`program` replaces function/args/retval/stack: give one or other")
            return self
        if self.function is None:
            raise ValueError("`function` is required (or a raw `program` where allowed)")
        if self.mode == "histogram" and self.of.startswith("arg"):
            n = int(self.of[3:])
            if n < len(self.args) and self.args[n] == "str":
                raise ValueError(f"`of`: {self.of} is a string; a histogram needs a number")
        return self


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
