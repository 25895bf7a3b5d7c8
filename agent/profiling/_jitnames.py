"""JIT frame names for the flight recorder: addresses in a process's perf map.

On-demand profiles hand a target's ``/tmp/perf-PID.map`` to perf script
(:mod:`agent.profiling._perfmaps`); the recorder symbolizes its samples itself, as
they arrive, so it reads the maps itself: an address that no file mapping holds
(named ``[unknown]``: outside every file mapping) is looked up in the map
of its process, as perf does. Node (``--perf-basic-prof``) appends to its map as it
compiles; a JVM writes its whole map when asked (``jattach PID jcmd
Compiler.perfmap``, which the recorder does for the JVMs it records, see
:mod:`agent.profiling._flight_recorder`). A map is re-read when it has changed and one of
its process's addresses was not found, at most every ``RELOAD_EVERY_S``, and at most
``MAX_MAP_BYTES`` of it (the app decides its size). The app owns its /tmp: the map
is opened through :func:`agent.procfs.open_perf_map` (no symlink followed, regular
files only).
"""

from __future__ import annotations

import bisect
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent import procfs

MAX_MAP_BYTES = 64 << 20
RELOAD_EVERY_S = 2.0
UNKNOWN = "[unknown]"


@dataclass
class _Map:
    identity: tuple[int, int] = (0, 0)  # (inode, size) when read
    read_at: float = 0.0
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def lookup(self, address: int) -> str | None:
        i = bisect.bisect_right(self.starts, address) - 1
        # Entries may overlap (code moved or recompiled): the nearest few starts below.
        for j in range(i, max(i - 8, -1), -1):
            if self.starts[j] <= address < self.ends[j]:
                return self.names[j]
        return None


def parse(data: bytes) -> tuple[list[int], list[int], list[str]]:
    """``START SIZE NAME`` lines (hex, with or without 0x) -> sorted starts, ends, names;
    a later line for the same start wins (the code there was replaced)."""
    by_start: dict[int, tuple[int, str]] = {}
    for raw in data.splitlines():
        parts = raw.decode("utf-8", "replace").split(" ", 2)
        if len(parts) != 3:
            continue
        try:
            start, size = int(parts[0], 16), int(parts[1], 16)
        except ValueError:
            continue
        if size > 0:
            by_start[start] = (start + size, parts[2].strip() or UNKNOWN)
    starts = sorted(by_start)
    return starts, [by_start[s][0] for s in starts], [by_start[s][1] for s in starts]


class JitNames:
    """Perf maps of the recorded processes, read when needed (see the module docstring)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._maps: dict[int, _Map] = {}
        self._clock = clock

    def _load(self, pid: int) -> _Map | None:
        m = self._maps.get(pid)
        now = self._clock()
        if m is not None and now - m.read_at < RELOAD_EVERY_S:
            return m
        try:
            with procfs.open_perf_map(pid) as f:
                st = os.fstat(f.fileno())
                identity = (st.st_ino, st.st_size)
                if m is not None and m.identity == identity:
                    m.read_at = now
                    return m
                data = f.read(MAX_MAP_BYTES)
        except OSError:
            if m is not None:
                m.read_at = now  # gone: keep what it said (the process may have exited)
            return m
        if len(data) == MAX_MAP_BYTES:
            data = data[: data.rfind(b"\n") + 1]
        starts, ends, names = parse(data)
        m = _Map(identity=identity, read_at=now, starts=starts, ends=ends, names=names)
        self._maps[pid] = m
        return m

    def resolve(self, pid: int, addresses: list[int], names: list[str]) -> list[str]:
        """``names`` with each ``[unknown]`` replaced by its perf map's name, if any."""
        if UNKNOWN not in names:
            return names
        m = self._load(pid)
        if m is None or not m.starts:
            return names
        out = list(names)
        for i, (a, n) in enumerate(zip(addresses, names, strict=True)):
            if n == UNKNOWN:
                out[i] = m.lookup(a) or UNKNOWN
        return out

    def forget_except(self, pids: set[int]) -> None:
        """Drop the maps of processes no longer recorded."""
        for pid in [p for p in list(self._maps) if p not in pids]:
            with contextlib.suppress(KeyError):
                del self._maps[pid]
