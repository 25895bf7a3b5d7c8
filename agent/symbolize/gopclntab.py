"""Go's own symbol table, ``.gopclntab``: names, file:line, inlined frames and frame sizes
of every Go function, read from the binary's bytes (stripped or not).

Owns: parsing the pclntab of Go 1.18/1.19 (magic ``0xfffffff0``) and Go 1.20 onwards
(magic ``0xfffffff1``, the format of 1.20 to 1.26 at least) for little-endian 64-bit
binaries; mapping a PC to its function, to its inline chain (``FUNCDATA_InlTree`` with
``PCDATA_InlTreeIndex``, so a PC inside an inlined call names the inlined function and
every caller it was inlined into) and to its file:line; and the per-PC frame size
(``pcsp``) that says whether a frame is set up at a PC (the frameless-leaf check).

``runtime.pclntab`` survives ``-ldflags=-s -w`` because the Go runtime needs it for its
own tracebacks, which is what makes stripped Go binaries nameable. The format is the
one of Go's ``runtime/symtab.go`` and ``debug/gosym``; the code is ours. Older formats
(Go 1.2-1.17) are refused with :class:`PclntabError` naming the magic found.

The inline tree is reached through ``moduledata.gofunc`` (funcdata offsets are relative
to it since 1.18): :func:`_find_gofunc` finds the module data by the pointer it holds to
the pclntab. That pointer is a plain value only in non-PIE executables (Go's default on
linux/amd64); in PIE builds it is a relocation, and inlined frames are then not
expanded (:attr:`GoTable.inline` is False, the notes say so).

Everything is read lazily from an ``mmap`` of the file: only the functions a profile
hits are decoded, so a 100 MB binary costs its page cache, not a parse.
"""

from __future__ import annotations

import bisect
import mmap
import struct
from array import array
from dataclasses import dataclass
from typing import BinaryIO

__all__ = ["GO118", "GO120", "GoFrame", "GoTable", "PclntabError"]

GO118 = 0xFFFFFFF0
GO120 = 0xFFFFFFF1
_OLD = {0xFFFFFFFB: "1.2-1.15", 0xFFFFFFFA: "1.16-1.17"}
_PCDATA_INLTREE = 2
_FUNCDATA_INLTREE = 3
_NO_FUNCDATA = 0xFFFFFFFF
_MAX_INLINE_DEPTH = 64  # a corrupt tree must not loop
_TABLES_MAX = 50_000  # decoded pcvalue tables kept per binary


class PclntabError(ValueError):
    """The pclntab is missing, of an unsupported version, truncated or corrupt."""


@dataclass(frozen=True, slots=True)
class GoFrame:
    name: str
    file: str
    line: int
    inlined: bool
    """True for a frame the compiler inlined into its caller (no call happened)."""


@dataclass(frozen=True, slots=True)
class _Func:
    entry: int  # absolute PC
    off: int  # offset of the _func record in the pclntab's function table
    name_off: int
    pcsp: int
    pcfile: int
    pcln: int
    npcdata: int
    cu_offset: int
    nfuncdata: int


def _uvarint(data: bytes | mmap.mmap, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise PclntabError("pclntab: varint overflow (corrupt table)")


class GoTable:
    """The pclntab of one Go binary (see the module docstring)."""

    def __init__(
        self,
        data: bytes | mmap.mmap,
        base: int,
        *,
        text_start: int | None = None,
        gofunc_data: tuple[bytes | mmap.mmap, int, int] | None = None,
    ) -> None:
        """``data[base:]`` is the pcHeader. ``text_start`` overrides the header's (PIE
        files hold 0 there). ``gofunc_data``: (bytes, offset in them, limit) where
        ``moduledata.gofunc`` lives, for the inline tree; None = no inline expansion."""
        self._data = data
        self._base = base
        try:
            magic, pad1, pad2, quantum, ptrsize = struct.unpack_from("<IBBBB", data, base)
        except struct.error as e:
            raise PclntabError("pclntab: truncated header") from e
        if magic in _OLD:
            raise PclntabError(
                f"pclntab: Go {_OLD[magic]} format (magic {magic:#x}); supported: Go 1.18 "
                "and later (magics 0xfffffff0, 0xfffffff1)"
            )
        if magic not in (GO118, GO120) or pad1 or pad2 or ptrsize != 8 or quantum not in (1, 4):
            raise PclntabError(f"pclntab: not a 64-bit Go 1.18+ header (magic {magic:#x})")
        self.magic = magic
        self.version = "1.18" if magic == GO118 else "1.20+"
        self._quantum = quantum
        try:
            (nfunc, _nfiles, text, funcname, cu, filetab, pctab, pcln) = struct.unpack_from(
                "<8Q", data, base + 8
            )
        except struct.error as e:
            raise PclntabError("pclntab: truncated header") from e
        size = len(data) - base
        for what, off in (
            ("funcname", funcname),
            ("cutab", cu),
            ("filetab", filetab),
            ("pctab", pctab),
            ("functab", pcln),
        ):
            if not 0 < off < size:
                raise PclntabError(f"pclntab: {what} offset {off:#x} outside the table")
        if not 0 < nfunc < 10_000_000 or pcln + (nfunc + 1) * 8 > size:
            raise PclntabError(f"pclntab: {nfunc} functions do not fit in the table (truncated)")
        # PIE files hold 0 there (the loader relocates it): the .text section's address.
        self.text_start = text or (text_start or 0)
        self.nfunc = nfunc
        self._funcname = base + funcname
        self._cutab = base + cu
        self._filetab = base + filetab
        self._pctab = base + pctab
        self._functab = base + pcln
        # _func's fixed part: 1.20 added startLine (one more uint32).
        self._func_size = 40 if magic == GO118 else 44
        raw = bytes(data[self._functab : self._functab + (nfunc + 1) * 8])
        pairs = array("I")
        pairs.frombytes(raw)
        self._entries = pairs[0::2]  # offsets from text_start; the last one is the end
        self._funcoffs = pairs[1::2]
        if any(a > b for a, b in zip(self._entries[:1000], self._entries[1:1001], strict=False)):
            raise PclntabError("pclntab: function table is not sorted (corrupt)")
        self._gofunc = gofunc_data
        self.inline = gofunc_data is not None
        self._funcs: dict[int, _Func] = {}
        self._names: dict[int, str] = {}
        self._tables: dict[tuple[int, int], tuple[array[int], list[int]]] = {}

    # --- functions ------------------------------------------------------------------
    @property
    def end(self) -> int:
        return self.text_start + self._entries[-1]

    def func_index(self, pc: int) -> int | None:
        """The index of the function holding ``pc``, or None outside Go's text."""
        off = pc - self.text_start
        if off < 0 or off >= self._entries[-1]:
            return None
        i = bisect.bisect_right(self._entries, off, 0, self.nfunc) - 1
        return i if i >= 0 else None

    def _func(self, i: int) -> _Func:
        f = self._funcs.get(i)
        if f is not None:
            return f
        off = self._functab + self._funcoffs[i]
        try:
            (entry_off, name_off, _args, _defer, pcsp, pcfile, pcln, npcdata, cu) = (
                struct.unpack_from("<IiiIIIIII", self._data, off)
            )
            nfuncdata = self._data[off + self._func_size - 1]
        except (struct.error, IndexError) as e:
            raise PclntabError(f"pclntab: function record {i} is truncated") from e
        if entry_off != self._entries[i] or npcdata > 1000:
            raise PclntabError(f"pclntab: function record {i} does not match its table entry")
        f = _Func(
            self.text_start + entry_off, off, name_off, pcsp, pcfile, pcln, npcdata, cu, nfuncdata
        )
        self._funcs[i] = f
        return f

    def entry(self, i: int) -> int:
        return self.text_start + self._entries[i]

    def size(self, i: int) -> int:
        return self._entries[i + 1] - self._entries[i]

    def _cstring(self, pos: int) -> str:
        end = self._data.find(b"\0", pos, pos + 65536)
        if end < 0:
            raise PclntabError("pclntab: unterminated name (truncated)")
        return bytes(self._data[pos:end]).decode("utf-8", "replace")

    def _name_at(self, name_off: int) -> str:
        name = self._names.get(name_off)
        if name is None:
            name = self._names[name_off] = self._cstring(self._funcname + name_off)
        return name

    def name(self, i: int) -> str:
        return self._name_at(self._func(i).name_off)

    def functions(self) -> list[tuple[str, int, int]]:
        """Every function: (name, entry PC, size)."""
        return [(self.name(i), self.entry(i), self.size(i)) for i in range(self.nfunc)]

    # --- per-PC tables -------------------------------------------------------------------
    def _pcvalue(self, f: _Func, table_off: int, pc: int) -> int | None:
        """The value of a pcvalue table at ``pc`` (Go's zig-zag delta encoding)."""
        if table_off == 0:
            return None
        # The linker shares identical tables between functions: PCs depend on the entry.
        table = self._tables.get((table_off, f.entry))
        if table is None:
            table = self._decode(f, table_off)
        ends, values = table
        i = bisect.bisect_right(ends, pc)
        return values[i] if i < len(values) else None

    def _decode(self, f: _Func, table_off: int) -> tuple[array[int], list[int]]:
        """A whole pcvalue table as (end PCs, values): a profile asks the same hot
        functions about many PCs, so each table is decoded once and then bisected."""
        pos = self._pctab + table_off
        data = self._data
        val = -1
        cur = f.entry
        first = True
        ends: array[int] = array("Q")
        values: list[int] = []
        try:
            while True:
                uv, pos = _uvarint(data, pos)
                if uv == 0 and not first:
                    break
                first = False
                val += -((uv + 1) >> 1) if uv & 1 else uv >> 1
                delta, pos = _uvarint(data, pos)
                if delta == 0:
                    continue  # an empty range
                cur += delta * self._quantum
                ends.append(cur)
                values.append(val)
                if len(values) > 1_000_000:
                    raise PclntabError("pclntab: pcvalue table does not end (corrupt)")
        except IndexError as e:
            raise PclntabError("pclntab: pcvalue table runs off the end (truncated)") from e
        if len(self._tables) >= _TABLES_MAX:
            self._tables.clear()  # bounded memory; hot tables come back at once
        self._tables[(table_off, f.entry)] = (ends, values)
        return ends, values

    def _pcdata_off(self, f: _Func, index: int) -> int:
        if index >= f.npcdata:
            return 0
        (v,) = struct.unpack_from("<I", self._data, f.off + self._func_size + 4 * index)
        return int(v)

    def _funcdata_off(self, f: _Func, index: int) -> int | None:
        if index >= f.nfuncdata:
            return None
        pos = f.off + self._func_size + 4 * f.npcdata + 4 * index
        (v,) = struct.unpack_from("<I", self._data, pos)
        return None if v == _NO_FUNCDATA else int(v)

    def sp_delta(self, pc: int) -> int | None:
        """Bytes the function holding ``pc`` has pushed on the stack at ``pc`` (0: no frame
        set up, the return address is at SP); None outside Go's text."""
        i = self.func_index(pc)
        if i is None:
            return None
        f = self._func(i)
        return self._pcvalue(f, f.pcsp, pc)

    def _file(self, f: _Func, pc: int) -> str:
        fileno = self._pcvalue(f, f.pcfile, pc)
        if fileno is None or fileno < 0:
            return "?"
        pos = self._cutab + 4 * (f.cu_offset + fileno)
        try:
            (off,) = struct.unpack_from("<I", self._data, pos)
        except struct.error:
            return "?"
        if off == 0xFFFFFFFF:
            return "?"
        return self._cstring(self._filetab + off)

    def _inline_index(self, f: _Func, pc: int) -> int:
        if self._gofunc is None:
            return -1
        off = self._pcdata_off(f, _PCDATA_INLTREE)
        if not off:
            return -1
        v = self._pcvalue(f, off, pc)
        return -1 if v is None else v

    def _inlined_call(self, f: _Func, index: int) -> tuple[int, int]:
        """(name offset, parentPc) of entry ``index`` of ``f``'s inline tree."""
        assert self._gofunc is not None
        data, gofunc, limit = self._gofunc
        tree = self._funcdata_off(f, _FUNCDATA_INLTREE)
        if tree is None:
            raise PclntabError("pclntab: inline index without an inline tree")
        if self.magic == GO118:
            # parent int16, funcID, pad, file int32, line int32, func_ int32, parentPc int32
            pos = gofunc + tree + 20 * index
            if pos + 20 > limit:
                raise PclntabError("pclntab: inline tree outside the binary")
            _p, _id, _pad, _file, _line, name_off, parent_pc = struct.unpack_from(
                "<hBBiiii", data, pos
            )
        else:
            # funcID, pad[3], nameOff int32, parentPc int32, startLine int32
            pos = gofunc + tree + 16 * index
            if pos + 16 > limit:
                raise PclntabError("pclntab: inline tree outside the binary")
            _id, name_off, parent_pc, _start = struct.unpack_from("<I3i", data, pos)
        return name_off, parent_pc

    def frames(self, pc: int, *, lines: bool = True) -> list[GoFrame]:
        """The frames at ``pc``, innermost first: the inlined calls (if any), then the
        function itself. ``lines=False`` skips file:line (names only, cheaper)."""
        i = self.func_index(pc)
        if i is None:
            return []
        f = self._func(i)
        out: list[GoFrame] = []
        cur = pc
        idx = self._inline_index(f, cur)
        while idx >= 0 and len(out) < _MAX_INLINE_DEPTH:
            name_off, parent_pc = self._inlined_call(f, idx)
            out.append(self._frame(f, cur, self._name_at(name_off), lines, inlined=True))
            cur = f.entry + parent_pc
            idx = self._inline_index(f, cur)
        out.append(self._frame(f, cur, self._name_at(f.name_off), lines, inlined=False))
        return out

    def _frame(self, f: _Func, pc: int, name: str, lines: bool, *, inlined: bool) -> GoFrame:
        if not lines:
            return GoFrame(name, "", 0, inlined)
        line = self._pcvalue(f, f.pcln, pc)
        return GoFrame(name, self._file(f, pc), line if line is not None else 0, inlined)


def _find_gofunc(
    data: bytes | mmap.mmap,
    *,
    pclntab_vaddr: int,
    magic: int,
    text_start: int,
    search: list[tuple[int, int, int]],
    vaddr_to_offset: list[tuple[int, int, int]],
) -> tuple[int, int] | None:
    """``moduledata.gofunc`` as (file offset, limit), found by the pointer the module data
    holds to the pclntab (its first field), checked by its ``text`` field.

    ``search``: (file offset, size, vaddr) of sections that may hold the module data;
    ``vaddr_to_offset``: (vaddr, size, file offset) of loaded file bytes.
    """
    needle = struct.pack("<Q", pclntab_vaddr)
    # moduledata offsets (amd64): text at 22*8; gofunc at 38*8 (1.18/1.19), 40*8 (1.20+:
    # covctrs, ecovctrs were added before it).
    gofunc_field = 38 * 8 if magic == GO118 else 40 * 8
    for off, size, _vaddr in search:
        pos = data.find(needle, off, off + size)
        while pos >= 0:
            if pos % 8 == 0 and pos + gofunc_field + 8 <= off + size:
                (text,) = struct.unpack_from("<Q", data, pos + 22 * 8)
                (gofunc,) = struct.unpack_from("<Q", data, pos + gofunc_field)
                if text == text_start:
                    for vaddr, vsize, foff in vaddr_to_offset:
                        if vaddr <= gofunc < vaddr + vsize:
                            return foff + (gofunc - vaddr), foff + vsize
            pos = data.find(needle, pos + 1, off + size)
    return None


def open_table(f: BinaryIO, sections: dict[str, tuple[int, int, int]], *, pie: bool) -> GoTable:
    """The pclntab of an opened ELF file, given its sections ``name -> (offset, size,
    vaddr)``. Raises :class:`PclntabError` when there is none or it is unreadable."""
    data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    sec = sections.get(".gopclntab")
    if sec is not None:
        base, _size, vaddr = sec
    else:
        # Some linkers (external linking, PIE) fold it into .data.rel.ro: look for the
        # header's magic there and let the header checks judge.
        base = -1
        vaddr = 0
        for name in (".data.rel.ro", ".rodata"):
            s = sections.get(name)
            if s is None:
                continue
            for magic in (GO120, GO118):
                pos = data.find(struct.pack("<IBBBB", magic, 0, 0, 1, 8), s[0], s[0] + s[1])
                if pos >= 0:
                    base, vaddr = pos, s[2] + (pos - s[0])
                    break
            if base >= 0:
                break
        if base < 0:
            raise PclntabError("no .gopclntab: not a Go binary, or Go older than 1.2")
    text = sections.get(".text")
    probe = GoTable(data, base, text_start=text[2] if text else None)
    gofunc = None
    if not pie:
        found = _find_gofunc(
            data,
            pclntab_vaddr=vaddr,
            magic=probe.magic,
            text_start=probe.text_start,
            # Go 1.26 gives the module data a section of its own (.go.module).
            search=[sections[n] for n in (".go.module", ".noptrdata", ".data") if n in sections],
            vaddr_to_offset=[
                (s[2], s[1], s[0])
                for n, s in sections.items()
                if s[2] and n not in (".bss", ".noptrbss", ".tbss")
            ],
        )
        if found is not None:
            gofunc = (data, found[0], found[1])
    return GoTable(data, base, text_start=text[2] if text else None, gofunc_data=gofunc)
