"""File and first line of the functions a profile names, for pprof's Function and Line
records (:func:`tracecar_formats.pprof.to_pprof`'s ``sources``).

Owns :func:`go_sources`: for the Go executables and libraries the profile's processes
map, each named frame that is a Go function is looked up in the object's
``.gopclntab`` (stripped or not) and given the file and line of its entry (the ``func``
line). Folded stacks count per function, so a function's first line is what a
location can carry. Functions the compiler only ever inlined have no entry of their
own and get no line; native code would need DWARF line tables, which are not read
here (its frames keep a name only). Python frames carry their own file:line
(py-spy's ``function (file:line)``), read by the pprof encoder itself.

:func:`pclntab_entry` answers the probes' question about a stripped Go binary: is
this address a function's entry (an instruction boundary bpftrace cannot check), and
at which file offset (which bpftrace cannot compute without a symbol)?

Processes must still run (their objects are found through ``/proc/PID``); a process
that is gone gives nothing, never an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from agent import procfs, symbols
from agent.errors import Invalid, NotFound
from agent.symbolize._objects import ElfObject, load_object

__all__ = ["go_sources", "pclntab_entry"]

MAX_PIDS = 64
"""Processes looked at for one profile at most (a pod's worth)."""


@lru_cache(maxsize=16)
def _entries(elf: ElfObject) -> dict[str, int]:
    """Go function name -> entry PC (one table per object, kept for the next profile)."""
    go = elf.go
    assert go is not None
    out: dict[str, int] = {}
    for name, entry, _size in go.functions():
        out.setdefault(name, entry)
    return out


def go_sources(pids: Iterable[int], frames: Iterable[str]) -> dict[str, tuple[str, int]]:
    """``{frame name: (file, line)}`` for the ``frames`` that are Go functions of the
    processes ``pids`` (see the module docstring)."""
    wanted = {f for f in frames if f and not f.startswith("[")}
    out: dict[str, tuple[str, int]] = {}
    seen: set[str] = set()
    for pid in list(pids)[:MAX_PIDS]:
        try:
            maps = symbols.maps(pid)
        except (NotFound, Invalid):
            continue
        for m in maps:
            if not m.executable or m.path in seen:
                continue
            seen.add(m.path)
            try:
                elf = load_object(procfs.resolve_in_root(pid, m.path))
            except (Invalid, NotFound, OSError):
                continue
            if elf is None or elf.go is None:
                continue
            entries = _entries(elf)
            for name in wanted - out.keys():
                entry = entries.get(name)
                if entry is None:
                    continue
                try:
                    chain = elf.go.frames(entry, lines=True)
                except (ValueError, IndexError):
                    continue  # a corrupt table: no line, the name stands
                if chain and chain[-1].file:
                    out[name] = (chain[-1].file, chain[-1].line)
    return out


def pclntab_entry(host_path: Path, address: int) -> int | None:
    """The file offset of ``address`` when it is a function's entry in a Go binary known
    only from its ``.gopclntab`` (no ``.symtab``: a tracer's own symbol check, which
    also turns an address into the offset a uprobe needs, finds nothing there)."""
    elf = load_object(host_path)
    if elf is None or elf.go is None or elf.has_symtab:
        return None
    i = elf.go.func_index(address)
    if i is None or elf.go.entry(i) != address:
        return None
    for off, vaddr, size in elf.segments:
        if vaddr <= address < vaddr + size:
            return address - vaddr + off
    return None
