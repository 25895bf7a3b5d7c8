"""The resolved probe (what to attach where) and the tracer-neutral records parsers produce.

A :class:`Spec` is built from a validated :class:`~agent.probes._model.ProbeRequest`
after the target process, binary and symbol are resolved; the backends' pure
planners turn it into a bpftrace program or ``perf probe`` command lines, and
their parsers turn the tracer's output back into :class:`Hit`, :class:`Counts`,
:class:`Buckets` and :class:`Lost` records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.probes._model import ArgType, Bucket, Mode


@dataclass(frozen=True, slots=True)
class Spec:
    pid: int
    binary: str
    """The object as the process sees it (``/srv/app``, ``/usr/lib/.../libc.so.6``)."""
    host_binary: str
    """The same object reached through ``/proc/PID/root`` (validated path characters)."""
    function: str
    """Symbol, ``symbol+0xOFF`` or ``0xADDRESS``."""
    address: int | None
    """The function's ELF virtual address when known (symbol + offset, or the address)."""
    mode: Mode
    of: str
    args: tuple[ArgType, ...]
    retval: bool
    retval_type: ArgType
    stack: bool
    duration_s: float
    max_events: int
    usdt: str | None = None
    """A USDT probe ``provider:name`` in ``binary`` (then ``function`` repeats it)."""
    usdt_return: str | None = None
    """The probe that closes ``usdt`` (``function__entry`` -> ``function__return``): latency."""
    usdt_enable: tuple[str, ...] = ()
    """Probes attached with no action, only so the program takes the path that fires ``usdt``."""
    python_function: str | None = None
    python_file: str | None = None
    pclntab_entry: int | None = None
    """The file offset of ``address`` when it is a function's entry known only from a
    stripped Go binary's ``.gopclntab``: bpftrace, which checks an address against
    ``.symtab``/``.dynsym`` and turns it into a file offset through them, can do
    neither, so it is given the offset and runs with ``--unsafe`` (the agent checked
    the boundary; the program it generates calls no unsafe builtin)."""

    @property
    def is_usdt(self) -> bool:
        return self.usdt is not None

    @property
    def needs_return(self) -> bool:
        if self.mode == "events":
            return self.retval
        return self.mode == "histogram" and self.of in ("latency", "retval")

    @property
    def needs_entry(self) -> bool:
        return not (self.mode == "histogram" and self.of == "retval")

    @property
    def in_function(self) -> bool:
        """True when the probe point is inside a function rather than at its entry."""
        return "+" in self.function


@dataclass(slots=True)
class Hit:
    event: dict[str, Any]
    host_tid: int = 0


@dataclass(slots=True)
class Counts:
    hits: int


@dataclass(slots=True)
class Buckets:
    buckets: list[Bucket]


@dataclass(slots=True)
class Lost:
    events: int


@dataclass(slots=True)
class Attached:
    probes: int = 0


@dataclass(slots=True)
class Finished:
    pass


Item = Hit | Counts | Buckets | Lost | Attached | Finished


@dataclass(slots=True)
class Pow2Histogram:
    """bpftrace's ``hist()`` buckets, for backends that only deliver single values."""

    negative: int = 0
    zero: int = 0
    powers: dict[int, int] = field(default_factory=dict)

    def add(self, value: int) -> None:
        if value < 0:
            self.negative += 1
        elif value == 0:
            self.zero += 1
        else:
            k = value.bit_length() - 1
            self.powers[k] = self.powers.get(k, 0) + 1

    def buckets(self) -> list[Bucket]:
        out: list[Bucket] = []
        if self.negative:
            out.append({"min": None, "max": -1, "count": self.negative})
        if self.zero:
            out.append({"min": 0, "max": 0, "count": self.zero})
        for k in sorted(self.powers):
            out.append({"min": 1 << k, "max": (1 << (k + 1)) - 1, "count": self.powers[k]})
        return out
