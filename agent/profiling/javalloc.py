"""Java allocation profiles by Java method, the pure part: async-profiler's ``alloc``
mode as the agent drives it (the agent arguments of each command, the names of the
files it leaves in the JVM's /tmp), its ``collapsed`` output read, and folded under
tracecar's convention ``comm;[java];Class.method...;allocated class``.

async-profiler samples the JVM's own heap allocations (JVMTI ``SampledObjectAlloc``,
JDK 11 and later): one sample each time about ``interval`` bytes have been allocated
(HotSpot's randomised heap sampling), whose stack ends in the allocating Java method
and then the allocated class. With ``total`` each sample weighs ``max(interval, the
object's size)`` bytes (an unbiased estimate of the bytes allocated); without it, one:
the ``count`` view counts samples, not allocations (async-profiler records no per-object
count). :mod:`agent.profiling._asyncprof` runs it.
"""

from __future__ import annotations

import re

__all__ = [
    "DEFAULT_INTERVAL",
    "PREFIX",
    "Names",
    "dump_args",
    "fold",
    "parse_collapsed",
    "sampling",
    "start_args",
    "stop_args",
    "token_of",
]

DEFAULT_INTERVAL = 512 * 1024
"""Bytes of Java heap allocated per sample: async-profiler's own default (its overhead is
negligible there: a JVMTI callback and a stack walk per half MiB allocated)."""
MIN_INTERVAL = 1024

PREFIX = "tracecar-async-profiler-"
"""Every file the agent puts in (or has the JVM write to) a JVM's /tmp starts so: the
library copy, the logs, the outputs. A leftover (an agent killed mid-profile) is swept
by the next Java allocation profile of that JVM."""

_TOKEN = re.compile(r"[0-9a-f]{8,32}")
_NAME = re.compile(re.escape(PREFIX) + r"([0-9a-f]{8,32})[-.]")


class Names:
    """One profile's file names in one JVM's /tmp (as the JVM sees them: ``/tmp/...``)."""

    __slots__ = ("token",)

    def __init__(self, token: str) -> None:
        if not _TOKEN.fullmatch(token):
            raise ValueError(f"token {token!r}: 8-32 lowercase hex digits")
        self.token = token

    @property
    def library(self) -> str:
        return f"{PREFIX}{self.token}.so"

    @property
    def bytes_out(self) -> str:
        """Folded by bytes: our dump at the end, or async-profiler's own when the JVM
        exits first (the start command names it: the JVM writes it at its shutdown)."""
        return f"{PREFIX}{self.token}-bytes.collapsed"

    @property
    def count_out(self) -> str:
        return f"{PREFIX}{self.token}-count.collapsed"

    def log(self, step: str) -> str:
        return f"{PREFIX}{self.token}-{step}.log"


def token_of(filename: str) -> str | None:
    """The profile token in one of our file names (None: not ours)."""
    m = _NAME.match(filename)
    return m[1] if m else None


def _in_tmp(name: str) -> str:
    return f"/tmp/{name}"


def start_args(n: Names, *, interval: int, timeout_s: int) -> str:
    """``start``: allocation sampling every ``interval`` bytes, stopping by itself after
    ``timeout_s`` (an agent killed mid-profile leaves no profiler running), and writing
    the bytes view at the JVM's shutdown if it exits before the end."""
    return ",".join(
        (
            "start",
            "event=alloc",
            f"alloc={max(MIN_INTERVAL, interval)}",
            f"timeout={max(1, timeout_s)}",
            f"file={_in_tmp(n.bytes_out)}",
            "collapsed",
            "total",
            "dot",
            f"log={_in_tmp(n.log('start'))}",
        )
    )


def stop_args(n: Names) -> str:
    return f"stop,log={_in_tmp(n.log('stop'))}"


def dump_args(n: Names, *, weight: str, last: bool = False) -> str:
    """``dump`` of the stopped profiler's samples, collapsed: ``total`` (bytes) or
    ``samples``. ``last``: its log goes to /dev/null, so the JVM holds no file of ours
    open afterwards (async-profiler keeps its last log open until the next command)."""
    out, how = (n.bytes_out, "total") if weight == "bytes" else (n.count_out, "samples")
    log = "/dev/null" if last else _in_tmp(n.log(f"dump-{weight}"))
    return f"dump,file={_in_tmp(out)},collapsed,{how},dot,log={log}"


def parse_collapsed(text: str) -> dict[str, int]:
    """async-profiler's ``collapsed`` output (``frame;frame;... N`` a line) as a dict."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        stack, _, n = line.rstrip().rpartition(" ")
        if not stack or not n.isdigit() or int(n) <= 0:
            continue
        out[stack] = out.get(stack, 0) + int(n)
    return out


def fold(stacks: dict[str, int], *, comm: str) -> dict[str, int]:
    """Collapsed stacks (root first, the allocated class last) under ``comm;[java]``."""
    root = (comm.replace(" ", "_").replace(";", ":") or "java") + ";[java];"
    out: dict[str, int] = {}
    for stack, n in stacks.items():
        key = root + stack
        out[key] = out.get(key, 0) + n
    return out


def sampling(interval: int) -> str:
    """The Java sampling, as the plan and the notes say it."""
    return (
        f"async-profiler's alloc mode: one sample per {_size(interval)} of Java heap "
        "allocated on average (the JVM's heap sampling), weighing its object's size or "
        f"{_size(interval)}, whichever is larger; weight=count counts samples, not "
        "allocations"
    )


def _size(n: int) -> str:
    if n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n % 1024 == 0:
        return f"{n >> 10} KiB"
    return f"{n} bytes"
