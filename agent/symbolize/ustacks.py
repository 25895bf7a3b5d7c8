"""Raw user stacks (addresses, innermost first) named as CPU profiles name them.

bpftrace's ``ustack`` gives addresses only: the off-CPU profiles' frame-pointer
recorder, the flight recorder's sampler and probe stacks all print them, and the agent
names them itself (bpftrace cannot see the pod's /proc under the node's pid). Owned
here: :class:`UserStacks`, which turns one process's address stack into frames through
the same :class:`~agent.symbolize.resolver.Symbolizer` post-processing hands the CPU
profiles' collapser, so every output says the same thing:

* Go from its ``.gopclntab`` (stripped or not), inlined calls as frames of their own;
  stripped native code from its separate debug file (build-id path, debuglink,
  debuginfod); everything else from the object's own symbols (``[object]`` where it
  has none, ``[unknown]`` outside any file mapping);
* every frame but the innermost is a return address, named by the call before it
  (``caller=True``), as the collapser does for perf's frame lines;
* the caller a frameless leaf hides (a frame-pointer walk skips it) is put back with
  :meth:`Symbolizer.missing_caller`, the CPU profiles' fix-up.

Addresses are handed to the symbolizer as perf prints them: absolute in a non-PIE
executable, the file offset (``address - start + pgoff``) in a PIE or a library, so no
memory map of the process is needed afterwards. Each process's maps are read once and
read again (at most once a second) when an address falls outside them (a library
loaded since). Addresses outside every file mapping (a JIT's code) are named by the
``unknown`` hook each time, not cached: a perf map names more as the JIT compiles. Names are
cached per (process, address); the caches are bounded.
"""

from __future__ import annotations

import bisect
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent import procfs, symbols
from agent.errors import AgentError, Invalid, NotFound
from agent.symbolize._objects import load_object
from agent.symbolize.resolver import Symbolizer

__all__ = ["UserStacks"]

MAPS_REREAD_S = 1.0
_CACHE_MAX = 1 << 16
"""Names, leaf fix-ups and objects remembered at most (then forgotten at once)."""


@dataclass(frozen=True, slots=True)
class _Where:
    pc: bytes  # as perf prints it (hex, no 0x)
    mod: bytes  # the object's path as the process sees it
    fallback: str  # its name from the object's own symbols, or ``[object]``


class _Maps:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.maps: list[symbols.Mapping] = []
        self.starts: list[int] = []
        self.read_at = 0.0
        self.read()

    def stale(self) -> bool:
        # Once a second at most: a JIT's code is outside every file mapping, and each new
        # address of it would otherwise read the maps again.
        return time.monotonic() - self.read_at >= MAPS_REREAD_S

    def read(self) -> None:
        self.read_at = time.monotonic()
        try:
            self.maps = sorted(symbols.maps(self.pid), key=lambda m: m.start)
        except (NotFound, Invalid):
            self.maps = []
        self.starts = [m.start for m in self.maps]

    def find(self, address: int) -> symbols.Mapping | None:
        i = bisect.bisect_right(self.starts, address) - 1
        if i >= 0 and address < self.maps[i].end:
            return self.maps[i]
        return None


class UserStacks:
    """Names for raw user stacks of live processes (see the module docstring). One per
    profile (off-CPU, a probe) or per recorder generation: the symbolizer caches each
    process's objects for its lifetime, so a recorder starts a new one now and then."""

    def __init__(
        self,
        symbolizer: Symbolizer | None = None,
        *,
        unknown: Callable[[int, int], str] | None = None,
    ) -> None:
        """``unknown(pid, address)``: the name of an address outside every file mapping
        (a JIT's code: its perf map), instead of ``[unknown]``."""
        self.symbolizer = symbolizer if symbolizer is not None else Symbolizer()
        self.unknown = unknown
        self._maps: dict[int, _Maps] = {}
        self._where: dict[tuple[int, int], _Where | None] = {}
        self._names: dict[tuple[int, int, bool], list[str]] = {}
        self._callers: dict[tuple[int, int, int], str | None] = {}
        self._pie: dict[str, bool] = {}

    # --- one frame -----------------------------------------------------------------
    def _locate(self, pid: int, address: int) -> _Where | None:
        key = (pid, address)
        try:
            return self._where[key]
        except KeyError:
            pass
        maps = self._maps.get(pid)
        if maps is None:
            maps = self._maps[pid] = _Maps(pid)
        m = maps.find(address)
        if m is None and maps.maps and maps.stale():
            maps.read()  # mapped since the maps were read (dlopen, a JIT's code file)
            m = maps.find(address)
        where = None
        if m is not None:
            offset = address - m.start + m.offset
            pc = offset if self._is_pie(pid, m.path) else address
            where = _Where(
                pc=f"{pc:x}".encode(),
                mod=m.path.encode("utf-8", "surrogateescape"),
                fallback=_own_name(pid, m.path, offset),
            )
        if len(self._where) > _CACHE_MAX:
            self._where.clear()
        self._where[key] = where
        return where

    def _is_pie(self, pid: int, path: str) -> bool:
        pie = self._pie.get(path)
        if pie is None:
            try:
                elf = load_object(procfs.resolve_in_root(pid, path))
            except (Invalid, NotFound, OSError):
                elf = None
            # Unreadable: a library is the likelier guess (its offset is what perf prints).
            pie = self._pie[path] = elf is None or elf.pie
        return pie

    def _frame(self, pid: int, address: int, *, caller: bool) -> list[str]:
        key = (pid, address, caller)
        names = self._names.get(key)
        if names is not None:
            return names
        where = self._locate(pid, address)
        if where is None:
            # Not cached: a JIT's perf map names more of its code as it compiles.
            return [self.unknown(pid, address) if self.unknown is not None else "[unknown]"]
        try:
            got = self.symbolizer.frames(
                str(pid).encode(), where.pc, b"[unknown]", where.mod, caller=caller
            )
        except (AgentError, OSError):
            got = None  # the process went away meanwhile: the object's own names stand
        names = [f.decode("utf-8", "surrogateescape") for f in got] if got else [where.fallback]
        if len(self._names) > _CACHE_MAX:
            self._names.clear()
        self._names[key] = names
        return names

    def _missing_caller(self, pid: int, leaf: int, ret: int) -> str | None:
        key = (pid, leaf, ret)
        if key in self._callers:
            return self._callers[key]
        lw, rw = self._locate(pid, leaf), self._locate(pid, ret)
        name = None
        if lw is not None and rw is not None:
            try:
                got = self.symbolizer.missing_caller(
                    str(pid).encode(), (lw.pc, lw.mod), (rw.pc, rw.mod)
                )
            except (AgentError, OSError):
                got = None  # the process went away meanwhile
            name = None if got is None else got.decode("utf-8", "surrogateescape")
        if len(self._callers) > _CACHE_MAX:
            self._callers.clear()
        self._callers[key] = name
        return name

    # --- one stack -----------------------------------------------------------------
    def frames(self, pid: int, addresses: Sequence[int]) -> list[str]:
        """The frames of ``pid``'s user stack ``addresses`` (innermost first, as bpftrace
        prints them), root first, inlined calls and a frameless leaf's caller included."""
        out: list[str] = []
        n = len(addresses)
        for i in range(n - 1, -1, -1):
            out += self._frame(pid, addresses[i], caller=i > 0)
            if i == 1:
                hidden = self._missing_caller(pid, addresses[0], addresses[1])
                if hidden is not None:
                    out.append(hidden)
        return out

    def report(self) -> list[dict[str, object]]:
        """Per object: where its names came from (:meth:`Symbolizer.report`)."""
        return self.symbolizer.report()

    @property
    def leaf_fixes(self) -> int:
        return self.symbolizer.leaf_fixes


def _own_name(pid: int, path: str, offset: int) -> str:
    """The function at file ``offset`` of ``path`` by the object's own symbols (symtab,
    dynsym, a stripped Go binary's pclntab), else ``[object]``: what CPU profiles show
    when nothing better is known."""
    base = os.path.basename(path)
    try:
        syms = symbols.object_symbols(procfs.resolve_in_root(pid, path))
    except (NotFound, Invalid, OSError):
        return f"[{base}]"
    sym = syms.function_at(syms.offset_to_vaddr(offset))
    return sym.name if sym is not None else f"[{base}]"
