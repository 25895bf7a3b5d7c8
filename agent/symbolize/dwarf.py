"""Inlined frames of native code, from the DWARF the object (or its debug file) carries.

Owns turning a PC of a C, C++ or Rust object into the chain of calls the compiler
inlined there (``DW_TAG_inlined_subroutine`` nested in the ``DW_TAG_subprogram``
holding the PC), each named by its abstract origin (``namespace::class::name`` when the
origin sits in namespaces or classes). Names only: a flame graph's frames, not lines.

Why not ``perf script --inline``: perf asks addr2line about every address of every
sample and takes minutes on big binaries (platform notes). Here the work is per
*compile unit*: the unit holding a PC is found through ``.debug_aranges`` (or the
units' own ranges), its DIEs are read once (pyelftools) into a tree of ranges, and
every later PC in it costs a bisect and a walk down a few nested ranges. A profile
touches a handful of units, so the cost follows what was sampled, not the binary's
size. Two bounds keep a huge binary from costing the profile: debug sections larger
than :data:`MAX_DWARF_BYTES` are not read (pyelftools holds them in memory), and
decoding stops at the profile's deadline (the notes say so; perf's names stand).

Thread-safe: pyelftools seeks one stream, so one lock per object serialises decoding
(two profiles may post-process at once); results are cached per object.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

from elftools.common.exceptions import DWARFError, ELFError
from elftools.dwarf.ranges import BaseAddressEntry, RangeEntry
from elftools.elf.elffile import ELFFile

__all__ = ["MAX_DWARF_BYTES", "DwarfInline", "OverBudget", "load_dwarf"]

MAX_DWARF_BYTES = 512 << 20
"""Debug sections (decompressed) above this are not read: pyelftools holds them in memory."""
_DEBUG_SECTIONS = (".debug_info", ".debug_abbrev", ".debug_str", ".debug_ranges", ".debug_rnglists")
_SCOPES = {"DW_TAG_subprogram", "DW_TAG_inlined_subroutine"}
_QUALIFIERS = {
    "DW_TAG_namespace",
    "DW_TAG_class_type",
    "DW_TAG_structure_type",
    "DW_TAG_union_type",
}
_MAX_HOPS = 8  # abstract_origin / specification chains; corrupt ones must not loop
_CHECK_EVERY = 256  # DIEs between deadline checks
_ADDR_CACHE_MAX = 200_000


class OverBudget(Exception):
    """Decoding a unit did not finish before the deadline (it is tried again later)."""


@dataclass(slots=True)
class _Scope:
    ranges: list[tuple[int, int]]
    name: str | None  # inlined calls: the callee's name; functions: not needed
    children: list[_Scope] = field(default_factory=list)
    _starts: list[int] | None = None
    _spans: list[tuple[int, int, _Scope]] | None = None

    def inner(self, pc: int) -> _Scope | None:
        """The inlined call holding ``pc`` directly inside this scope (a bisect: a hot
        interpreter loop holds thousands of them)."""
        if self._spans is None:
            spans = sorted(
                ((lo, hi, c) for c in self.children for lo, hi in c.ranges), key=lambda s: s[0]
            )
            self._spans = spans
            self._starts = [s[0] for s in spans]
        assert self._starts is not None
        i = bisect.bisect_right(self._starts, pc) - 1
        # Sibling calls do not overlap: the one starting last before pc, or none (a few
        # entries back in case a producer left one range inside another).
        for j in range(i, max(i - 8, -1), -1):
            lo, hi, c = self._spans[j]
            if lo <= pc < hi:
                return c
        return None


@dataclass(slots=True)
class _Unit:
    starts: list[int]  # sorted start PCs of the functions' ranges
    spans: list[tuple[int, int, _Scope]]  # (lo, hi, function) in the same order


class DwarfInline:
    """The inline chains of one object's DWARF (see the module docstring)."""

    def __init__(self, stream: IO[bytes]) -> None:
        """``stream``: the object (or debug file) opened in binary mode; kept open."""
        self._stream = stream
        elf = ELFFile(stream)
        if not elf.has_dwarf_info() or elf.get_section_by_name(".debug_info") is None:
            raise ValueError("no .debug_info")
        size = 0
        for name in _DEBUG_SECTIONS:
            sec = elf.get_section_by_name(name)
            if sec is not None:
                size += sec.data_size if hasattr(sec, "data_size") else sec["sh_size"]
        if size > MAX_DWARF_BYTES:
            raise ValueError(
                f"its DWARF is {size >> 20} MiB, above the {MAX_DWARF_BYTES >> 20} MiB read here"
            )
        self._dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False)
        self._aranges: Any = None
        self._aranges_read = False
        self._cu_spans: list[tuple[int, int, int]] | None = None  # (lo, hi, cu offset)
        self._units: dict[int, _Unit | None] = {}  # cu offset -> unit (None: unusable)
        self._cache: dict[int, tuple[str, ...]] = {}
        self._lock = threading.Lock()
        self.units_decoded = 0
        self.dies_read = 0

    # --- which unit --------------------------------------------------------------
    def _cu_offset(self, pc: int) -> int | None:
        if not self._aranges_read:
            self._aranges_read = True
            try:
                self._aranges = self._dwarf.get_aranges()
            except (DWARFError, ELFError, ValueError, KeyError, IndexError):
                self._aranges = None
        if self._aranges is not None:
            try:
                off = self._aranges.cu_offset_at_addr(pc)
            except (DWARFError, ValueError, KeyError, IndexError):
                off = None
            if off is not None:
                return int(off)
        # No .debug_aranges (clang's default) or a hole in it: the units' own ranges.
        if self._cu_spans is None:
            spans = []
            for cu in self._dwarf.iter_CUs():
                top = cu.get_top_DIE()
                for lo, hi in self._ranges(top, cu, base=0):
                    spans.append((lo, hi, cu.cu_offset))
            spans.sort()
            self._cu_spans = spans
        for lo, hi, off in self._cu_spans:  # units are few; ranges may overlap
            if lo <= pc < hi:
                return off
        return None

    # --- ranges and names -----------------------------------------------------------
    def _ranges(self, die: Any, cu: Any, *, base: int) -> list[tuple[int, int]]:
        attrs = die.attributes
        low = attrs.get("DW_AT_low_pc")
        if low is not None and "DW_AT_high_pc" in attrs:
            high = attrs["DW_AT_high_pc"]
            lo = int(low.value)
            hi = int(high.value)
            if high.form not in ("DW_FORM_addr", "DW_FORM_addrx"):
                hi += lo  # DWARF 4+: high_pc as a length
            return [(lo, hi)] if hi > lo else []
        rng = attrs.get("DW_AT_ranges")
        if rng is None:
            return []
        lists = self._dwarf.range_lists()
        if lists is None:
            return []
        if rng.form == "DW_FORM_rnglistx":
            return []  # split DWARF's indexed lists: not read here
        out = []
        cur = base
        for entry in lists.get_range_list_at_offset(rng.value, cu=cu):
            if isinstance(entry, BaseAddressEntry):
                cur = entry.base_address
            elif isinstance(entry, RangeEntry):
                lo = entry.begin_offset if entry.is_absolute else cur + entry.begin_offset
                hi = entry.end_offset if entry.is_absolute else cur + entry.end_offset
                if hi > lo:
                    out.append((lo, hi))
        return out

    def _name(self, die: Any) -> str | None:
        """The name of a function DIE, through its abstract origin or specification,
        qualified by the namespaces and classes around the DIE that holds it."""
        for _ in range(_MAX_HOPS):
            attrs = die.attributes
            if "DW_AT_name" in attrs:
                name = attrs["DW_AT_name"].value
                text = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
                return self._qualified(die, text)
            for ref in ("DW_AT_abstract_origin", "DW_AT_specification"):
                if ref in attrs:
                    die = die.get_DIE_from_attribute(ref)
                    break
            else:
                return None
        return None

    def _qualified(self, die: Any, name: str) -> str:
        parts = [name]
        parent = die.get_parent()
        hops = 0
        while parent is not None and parent.tag in _QUALIFIERS and hops < _MAX_HOPS:
            hops += 1
            pname = parent.attributes.get("DW_AT_name")
            if pname is None:
                parts.append("(anonymous namespace)")
            else:
                v = pname.value
                parts.append(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
            parent = parent.get_parent()
        return "::".join(reversed(parts))

    # --- one unit ---------------------------------------------------------------------
    def _unit(self, cu_offset: int, deadline: float) -> _Unit | None:
        if cu_offset in self._units:
            return self._units[cu_offset]
        cu = self._dwarf.get_CU_at(cu_offset)
        top = cu.get_top_DIE()
        low = top.attributes.get("DW_AT_low_pc")
        base = int(low.value) if low is not None else 0
        scopes: dict[int, _Scope] = {}  # DIE offset -> scope
        functions: list[_Scope] = []
        n = 0
        for die in cu.iter_DIEs():
            n += 1
            if n % _CHECK_EVERY == 0 and time.monotonic() > deadline:
                self.dies_read += n
                raise OverBudget(f"compile unit at {cu_offset:#x}: stopped after {n} entries")
            if die.tag not in _SCOPES:
                continue
            ranges = self._ranges(die, cu, base=base)
            if not ranges:
                continue
            # The nearest enclosing function or inlined call (lexical blocks between
            # them are transparent: an inlined call's ranges lie inside them anyway).
            parent = die._parent
            holder: _Scope | None = None
            while parent is not None:
                holder = scopes.get(parent.offset)
                if holder is not None:
                    break
                parent = parent._parent
            if die.tag == "DW_TAG_inlined_subroutine":
                if holder is None:
                    continue
                scope = _Scope(ranges, self._name(die))
                holder.children.append(scope)
            else:
                # A function, nested ones (GNU C) included: their code lies apart.
                scope = _Scope(ranges, None)
                functions.append(scope)
            scopes[die.offset] = scope
        self.dies_read += n
        self.units_decoded += 1
        spans = sorted(((lo, hi, f) for f in functions for lo, hi in f.ranges), key=lambda s: s[0])
        unit = _Unit([s[0] for s in spans], spans)
        self._units[cu_offset] = unit
        return unit

    # --- the question -------------------------------------------------------------------
    def inlined(self, pc: int, *, deadline: float) -> tuple[str, ...]:
        """The calls inlined at link-time address ``pc``, outermost first (empty: none,
        or no DWARF for it). Raises :class:`OverBudget` past ``deadline``."""
        hit = self._cache.get(pc)
        if hit is not None:
            return hit
        with self._lock:
            try:
                off = self._cu_offset(pc)
                unit = None if off is None else self._unit(off, deadline)
            except OverBudget:
                raise
            except (DWARFError, ELFError, ValueError, KeyError, IndexError, AttributeError) as e:
                # A unit pyelftools cannot read names nothing; the rest still may.
                if off is not None:
                    self._units[off] = None
                raise ValueError(f"unreadable DWARF: {e}") from e
        chain: list[str] = []
        if unit is not None:
            i = bisect.bisect_right(unit.starts, pc) - 1
            scope: _Scope | None = None
            if i >= 0 and unit.spans[i][0] <= pc < unit.spans[i][1]:
                scope = unit.spans[i][2]  # functions' ranges do not overlap
            while scope is not None:
                inner = scope.inner(pc)
                if inner is not None and inner.name is not None:
                    chain.append(inner.name)
                scope = inner
        out = tuple(chain)
        if len(self._cache) >= _ADDR_CACHE_MAX:
            self._cache.clear()
        self._cache[pc] = out
        return out


@lru_cache(maxsize=64)
def _load(path: str, _identity: tuple[int, int, int, int]) -> DwarfInline:
    f = open(path, "rb")  # noqa: SIM115 - kept open: pyelftools reads it lazily
    try:
        return DwarfInline(f)
    except BaseException:
        f.close()
        raise


def load_dwarf(host_path: Path) -> DwarfInline:
    """The DWARF of the object or debug file at ``host_path`` (cached by device, inode,
    size and mtime, as objects are). Raises ValueError saying why there is none."""
    try:
        st = os.stat(host_path)
        return _load(str(host_path), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    except ValueError:
        raise
    except (OSError, ELFError, DWARFError, KeyError, IndexError) as e:
        raise ValueError(f"unreadable DWARF: {e}") from e
