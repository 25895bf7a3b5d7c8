"""Names for the frames perf could not name, and the caller a frameless leaf hides.

Owns :class:`Symbolizer`, the object post-processing hands to the collapser (it
satisfies :class:`tracecar_formats.collapse.StackSymbolizer`) for one profile:

* **Go** objects are named from their ``.gopclntab`` whether stripped or not, so a
  stripped build and an unstripped one fold to the same stacks, inlined calls
  included (each inlined function is a frame of its own, as ``go tool pprof`` shows it);
* **stripped native** objects are named from their separate debug file
  (:mod:`agent.symbolize.debuginfo`: build-id path, debuglink, debuginfod);
* **native calls the compiler inlined** become frames of their own where the object
  or its debug file has DWARF (:mod:`agent.symbolize.dwarf`), under perf's (or the
  debug file's) name of the function they were inlined into;
* everything else keeps perf's own answer (its symtab, perf maps, the kernel's).

The **frameless-leaf fix-up** (:meth:`Symbolizer.missing_caller`): a frame-pointer
walk starts from the frame pointer, so when the sampled function has not set up a
frame at the sampled PC (Go: ``pcsp`` says nothing is pushed; C: ``.eh_frame`` says the
CFA is still computed from the stack pointer), its caller's frame is skipped and the
next address is the *caller's* return address into its own caller. The instruction
before that return address is the call that entered the missing caller: when it is
a direct ``call rel32`` its target names the missing frame, which is inserted. An
indirect call (function value, interface method, PLT) names nothing: the stack stays
as perf walked it. Perf 6.1 cannot give the return address itself with frame-pointer
call graphs (a user stack copy switches the whole sample to DWARF mode, which drops
the kernel's user call chain: see docs/profiling.md), hence the call-site reading.

:meth:`Symbolizer.report` says, per object, where its names came from.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import procfs, symbols
from agent.errors import Invalid, NotFound
from agent.settings import Settings
from agent.symbolize._ehframe import RSP
from agent.symbolize._objects import ElfObject, load_object
from agent.symbolize.debuginfo import DebuginfodCache, find_debug_file

if TYPE_CHECKING:
    from agent.symbolize.dwarf import DwarfInline

__all__ = ["Symbolizer"]

_PERF_MAP = re.compile(rb"^/tmp/perf-\d+\.map$")
_UNKNOWN = b"[unknown]"
DEBUGINFOD_BUDGET_S = 20.0
"""Time one profile may spend waiting for debuginfod servers, all objects together."""
DWARF_BUDGET_S = 20.0
"""Time one profile may spend decoding DWARF for inlined frames, all objects together."""


@dataclass(eq=False)
class _Obj:
    """One object as one process maps it."""

    mod: bytes
    elf: ElfObject | None
    source: str
    detail: str
    debug: symbols.ObjectSymbols | None = None
    notes: list[str] = field(default_factory=list)
    dwarf: DwarfInline | None = None
    inlined: str | None = None  # native objects: where inlined frames came from, or why not


class _Process:
    def __init__(self, owner: Symbolizer, pid: int) -> None:
        self.owner = owner
        self.pid = pid
        self.objects: dict[bytes, _Obj | None] = {}
        self._maps: list[symbols.Mapping] | None = None
        self.elves: dict[str, ElfObject] = {}  # opened while the process lived

    def prepare(self) -> None:
        """Open the process's executable objects now, while it lives: a process that
        exits before post-processing takes its /proc/PID/root along, and the open
        objects (their mmaps) keep its frames nameable."""
        for m in self.maps():
            if m.executable and m.path not in self.elves:
                try:
                    host = procfs.resolve_in_root(self.pid, m.path)
                except (Invalid, NotFound, OSError):
                    continue
                elf = load_object(host)
                if elf is not None:
                    self.elves[m.path] = elf

    def _root(self) -> Path:
        return procfs.proc_root(self.pid)

    def maps(self) -> list[symbols.Mapping]:
        if self._maps is None:
            try:
                self._maps = symbols.maps(self.pid)
            except (NotFound, Invalid):
                self._maps = []
        return self._maps

    def obj(self, mod: bytes) -> _Obj | None:
        try:
            return self.objects[mod]
        except KeyError:
            pass
        o = self._classify(mod)
        self.objects[mod] = o
        return o

    def _classify(self, mod: bytes) -> _Obj | None:
        if mod.startswith(b"[") or not mod.startswith(b"/"):
            return None  # the kernel, [vdso], [unknown]: nothing of ours to add
        if _PERF_MAP.match(mod):
            return _Obj(mod, None, "perf map", "the JIT's /tmp/perf-PID.map")
        path = mod.decode("utf-8", "surrogateescape")
        elf = self.elves.get(path)
        if elf is None:
            try:
                host = procfs.resolve_in_root(self.pid, path)
            except (Invalid, NotFound, OSError):
                host = None
            elf = load_object(host) if host is not None else None
        if elf is None:
            return _Obj(
                mod,
                None,
                "none",
                "unreadable when the profile was post-processed (the process exited, or "
                "the file is gone or not ELF)",
            )
        if elf.go is not None:
            inline = (
                "inlined calls as frames of their own"
                if elf.go.inline
                else "no inlined frames (PIE build: the inline tree is not reachable)"
            )
            return _Obj(mod, elf, "pclntab", f"Go {elf.go.version} .gopclntab; {inline}")
        if elf.has_symtab:
            detail = "perf's symbols (.symtab)"
            if elf.is_go and elf.go_error:
                detail += f"; its Go pclntab is unusable: {elf.go_error}"
            o = _Obj(mod, elf, "symtab", detail)
            if not elf.is_go:
                self._attach_dwarf(o, elf, elf.path)
            return o
        found, ignored = find_debug_file(
            self._root(),
            path,
            build_id=elf.build_id,
            debuglink=elf.debuglink,
            debuginfod=self.owner.debuginfod,
            deadline=self.owner.debuginfod_deadline(),
        )
        o = _Obj(mod, elf, found.source, found.detail, notes=ignored)
        if elf.is_go and elf.go_error:
            o.notes.append(f"its Go pclntab is unusable: {elf.go_error}")
        if found.path is not None:
            try:
                o.debug = symbols.object_symbols(found.path)
            except (Invalid, NotFound) as e:
                o.source, o.detail = "none", f"{found.detail}: unreadable ({e})"
            else:
                if not elf.is_go:
                    self._attach_dwarf(o, elf, str(found.path))
        else:
            dyn = elf.functions()
            if dyn is not None and dyn.functions:
                o.source = "dynsym"
                o.detail = f"stripped: only its exported symbols resolve ({found.detail})"
        return o

    def _attach_dwarf(self, o: _Obj, elf: ElfObject, path: str) -> None:
        """Inlined frames from the DWARF at ``path`` (the object or its debug file)."""
        if path == elf.path and ".debug_info" not in elf.sections:
            return  # no DWARF: nothing to say (most shipped objects)
        from agent.symbolize.dwarf import load_dwarf  # pyelftools, on first use

        try:
            o.dwarf = load_dwarf(Path(path))
        except ValueError as e:
            o.inlined = f"inlined calls not expanded: {e}"
            return
        o.inlined = "inlined calls as frames of their own (DWARF)"

    def inlined(self, o: _Obj, vaddr: int) -> tuple[str, ...]:
        """The calls inlined at ``vaddr``, outermost first; stops for this profile (and
        says so) when its DWARF budget is spent or the DWARF is unreadable."""
        from agent.symbolize.dwarf import OverBudget

        assert o.dwarf is not None
        try:
            return o.dwarf.inlined(vaddr, deadline=self.owner.dwarf_deadline())
        except OverBudget as e:
            why = (
                f"inlined calls expanded only in part: DWARF decoding took the profile's "
                f"{DWARF_BUDGET_S:g} s ({e}); perf's names stand for the rest"
            )
        except ValueError as e:
            why = f"inlined calls not expanded: {e}"
        o.dwarf = None
        o.inlined = why
        return ()

    def vaddr(self, o: _Obj, pc: int, *, absolute: bool = False) -> int | None:
        """The link-time address of a PC perf printed for this object.

        perf 6.1 prints a file-backed frame's address relative to its mapping (the file
        offset: ``ip - start + pgoff``), PIE or not (seen: 0x7a757 for 0x47a757 in a
        non-PIE Go binary), which needs no memory map of the process and survives its
        exit. So an address inside the file is an offset, first: in a big non-PIE
        binary (kube-apiserver's text spans file offsets 0 to 0x2e6a331, loaded at
        0x400000) most offsets are also plausible absolute addresses, of other code.
        ``absolute``: ``pc`` is a process address (bpftrace's stacks), taken as such
        (non-PIE) or mapped through ``/proc/PID/maps`` (PIE); also the fallback for an
        address past the file's end."""
        elf = o.elf
        assert elf is not None
        if not absolute and elf.data is not None and pc < len(elf.data):
            return elf.offset_to_vaddr(pc)
        if not elf.pie and any(v <= pc < v + n for _off, v, n in elf.segments):
            return pc
        path = o.mod.decode("utf-8", "surrogateescape")
        for m in self.maps():
            if m.path == path and m.start <= pc < m.end:
                return elf.offset_to_vaddr(pc - m.start + m.offset)
        return None

    def function_at(self, o: _Obj, vaddr: int, *, exact: bool) -> str | None:
        """The name of the function at ``vaddr`` (``exact``: starting there)."""
        assert o.elf is not None
        go = o.elf.go
        if go is not None:
            i = go.func_index(vaddr)
            if i is not None and (not exact or go.entry(i) == vaddr):
                return go.name(i)
            return None
        syms = o.debug or o.elf.functions()
        if syms is None:
            return None
        s = syms.function_at(vaddr)
        if s is None or (exact and s.address != vaddr):
            return None
        return s.name


class Symbolizer:
    """The symbolizer of one profile's post-processing (see the module docstring)."""

    def __init__(self, *, debuginfod: DebuginfodCache | None = None) -> None:
        self.debuginfod = debuginfod
        self._processes: dict[bytes, _Process | None] = {}
        self._deadline: float | None = None
        self._dwarf_deadline: float | None = None
        self.leaf_fixes = 0

    def prepare(self, pids: list[int]) -> None:
        """Open the targets' objects while they live (see :meth:`_Process.prepare`)."""
        for pid in pids:
            p = self._process(str(pid).encode())
            if p is not None:
                p.prepare()

    def debuginfod_deadline(self) -> float:
        if self._deadline is None:
            self._deadline = time.monotonic() + DEBUGINFOD_BUDGET_S
        return self._deadline

    def dwarf_deadline(self) -> float:
        if self._dwarf_deadline is None:
            self._dwarf_deadline = time.monotonic() + DWARF_BUDGET_S
        return self._dwarf_deadline

    def _process(self, pid: bytes) -> _Process | None:
        try:
            return self._processes[pid]
        except KeyError:
            pass
        p: _Process | None = None
        if pid.isdigit() and 0 < int(pid) <= 4_194_304:
            p = _Process(self, int(pid))
        self._processes[pid] = p
        return p

    # --- the collapser's questions ----------------------------------------------------
    def frames(
        self,
        pid: bytes,
        pc: bytes,
        sym: bytes,
        mod: bytes,
        *,
        caller: bool = False,
        absolute: bool = False,
    ) -> list[bytes] | None:
        """The frames at ``pc`` outermost first, or None to keep perf's ``sym``.
        ``caller``: ``pc`` is a return address, looked up at ``pc - 1`` (the call).
        ``pc`` is as perf prints it (an offset in ``mod``), or with ``absolute`` a
        process address (bpftrace's stacks; see :meth:`_Process.vaddr`)."""
        p = self._process(pid)
        if p is None:
            return None
        o = p.obj(mod)
        if o is None or o.elf is None:
            return None
        go = o.elf.go
        if go is None and o.debug is None and o.dwarf is None:
            return None
        try:
            v = p.vaddr(o, int(pc, 16), absolute=absolute)
        except ValueError:
            return None
        if v is None:
            return None
        if caller:
            v -= 1
        if go is not None:
            frames = go.frames(v, lines=False)
            if not frames:
                return None  # outside Go's text (cgo's C code): perf's name stands
            return [f.name.encode("utf-8", "surrogateescape") for f in reversed(frames)]
        chain = p.inlined(o, v) if o.dwarf is not None else ()
        if o.debug is None and not chain:
            return None  # perf's own name stands
        if o.debug is None and sym != _UNKNOWN:
            outer = sym  # perf's symtab name (a big symtab is not read again here)
        else:
            name = p.function_at(o, v, exact=False)
            if name is None:
                return None
            outer = name.encode("utf-8", "surrogateescape")
        return [outer, *(c.encode("utf-8", "surrogateescape") for c in chain)]

    def missing_caller(
        self, pid: bytes, leaf: tuple[bytes, bytes], ret: tuple[bytes, bytes]
    ) -> bytes | None:
        """The caller a frameless leaf hides, given the leaf's (pc, object) and the next
        address of the walk (pc, object), or None (see the module docstring)."""
        p = self._process(pid)
        if p is None:
            return None
        lo = p.obj(leaf[1])
        ro = lo if ret[1] == leaf[1] else p.obj(ret[1])
        if lo is None or lo.elf is None or ro is None or ro.elf is None:
            return None
        try:
            lv = p.vaddr(lo, int(leaf[0], 16))
            rv = p.vaddr(ro, int(ret[0], 16))
        except ValueError:
            return None
        if lv is None or rv is None or not _frameless(lo.elf, lv):
            return None
        code = ro.elf.read(rv - 5, 5)
        if code is None or code[0] != 0xE8:
            return None  # not a direct call: the missing caller cannot be named
        target = (rv + int.from_bytes(code[1:], "little", signed=True)) & (1 << 64) - 1
        name = p.function_at(ro, target, exact=True)
        if name is None or name == p.function_at(lo, lv, exact=False):
            return None
        self.leaf_fixes += 1
        return name.encode("utf-8", "surrogateescape")

    # --- what the notes say -----------------------------------------------------------------
    def report(self) -> list[dict[str, Any]]:
        """Per object: where its names came from (``source``: pclntab, symtab, build-id
        path, debuglink, debuginfod, dynsym, perf map, none) and the detail; ``inlined``
        for native objects with DWARF: whether their inlined calls became frames."""
        merged: dict[tuple[bytes, str, str], dict[str, Any]] = {}
        for pid, p in self._processes.items():
            if p is None:
                continue
            for o in p.objects.values():
                if o is None:
                    continue
                key = (o.mod, o.source, o.detail)
                entry = merged.get(key)
                if entry is None:
                    entry = merged[key] = {
                        "object": o.mod.decode("utf-8", "replace"),
                        "source": o.source,
                        "detail": o.detail,
                        "pids": [],
                        **({"ignored": list(o.notes)} if o.notes else {}),
                        **({"inlined": o.inlined} if o.inlined else {}),
                    }
                entry["pids"].append(int(pid))
        return sorted(merged.values(), key=lambda e: (e["object"], e["pids"]))


def _frameless(elf: ElfObject, vaddr: int) -> bool:
    """True when no frame is set up at ``vaddr``: a frame-pointer walk skips the caller."""
    if elf.go is not None and elf.go.func_index(vaddr) is not None:
        return elf.go.sp_delta(vaddr) == 0
    eh = elf.eh_frame()
    return eh is not None and eh.cfa_register(vaddr) == RSP


_caches: dict[tuple[str, str, int, float], DebuginfodCache] = {}
_caches_lock = threading.Lock()


def debuginfod_cache(settings: Settings) -> DebuginfodCache | None:
    """The agent's debuginfod cache (one per configuration: its memory of build-ids the
    servers lack outlives a profile), None when no server is configured."""
    from agent.symbolize.debuginfo import parse_urls

    urls = parse_urls(settings.debuginfod_urls)
    if not urls:
        return None
    directory = settings.debuginfod_cache_dir or settings.data_dir / "debuginfod"
    key = (
        " ".join(urls),
        str(directory),
        settings.debuginfod_cache_max_bytes,
        settings.debuginfod_timeout_s,
    )
    with _caches_lock:
        cache = _caches.get(key)
        if cache is None:
            cache = _caches[key] = DebuginfodCache(
                urls=urls,
                directory=directory,
                max_bytes=settings.debuginfod_cache_max_bytes,
                timeout_s=settings.debuginfod_timeout_s,
            )
    return cache


def for_profile(settings: Settings, pids: list[int]) -> Symbolizer:
    """A symbolizer for one profile of ``pids``, their objects opened already."""
    sym = Symbolizer(debuginfod=debuginfod_cache(settings))
    sym.prepare(pids)
    return sym


def note_lines(report: list[dict[str, Any]]) -> list[str]:
    """The report as notes, one line per object."""
    out = []
    for e in report:
        pids = ", ".join(map(str, e["pids"][:10]))
        line = f"symbols of {os.path.basename(e['object'])} (pid {pids}): {e['source']}"
        line += f" ({e['detail']})"
        if e.get("inlined"):
            line += f"; {e['inlined']}"
        for ig in e.get("ignored", []):
            line += f"; {ig}"
        out.append(line)
    return out
