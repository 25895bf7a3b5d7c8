"""Where the CFA is at a PC, from ``.eh_frame`` through ``.eh_frame_hdr``'s sorted table.

Owns one question the frameless-leaf check asks of native code: at this PC, is the
canonical frame address still computed from the stack pointer (no frame pointer set
up: the frame-pointer walk skips this function's caller) or from the frame pointer?
Only the CFA rule is tracked (not the saved registers): the few CFA opcodes gcc and
clang emit for x86-64, ``remember_state``/``restore_state`` included. A PC without an
FDE, or whose CFA is an expression (PLT stubs), answers None (unknown).
"""

from __future__ import annotations

import bisect
import mmap
import struct

__all__ = ["RBP", "RSP", "EhFrame"]

Buffer = bytes | mmap.mmap

RSP = 7  # DWARF register numbers on x86-64
RBP = 6

_DW_EH_PE_omit = 0xFF


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: Buffer, pos: int) -> None:
        self.data = memoryview(data)
        self.pos = pos

    def u8(self) -> int:
        v = self.data[self.pos]
        self.pos += 1
        return int(v)

    def fmt(self, f: str, n: int) -> int:
        (v,) = struct.unpack_from(f, self.data, self.pos)
        self.pos += n
        return int(v)

    def uleb(self) -> int:
        result = shift = 0
        while True:
            b = self.u8()
            result |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return result

    def sleb(self) -> int:
        result = shift = 0
        while True:
            b = self.u8()
            result |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                if b & 0x40:
                    result -= 1 << shift
                return result

    def encoded(self, enc: int, base_vaddr: int) -> int:
        """A pointer in ``enc`` encoding; ``base_vaddr`` = the vaddr of self.pos."""
        if enc == _DW_EH_PE_omit:
            return 0
        here = base_vaddr
        low = enc & 0x0F
        if low == 0x00:
            v = self.fmt("<Q", 8)
        elif low == 0x01:
            v = self.uleb()
        elif low == 0x02:
            v = self.fmt("<H", 2)
        elif low == 0x03:
            v = self.fmt("<I", 4)
        elif low == 0x04:
            v = self.fmt("<Q", 8)
        elif low == 0x09:
            v = self.sleb()
        elif low == 0x0A:
            v = self.fmt("<h", 2)
        elif low == 0x0B:
            v = self.fmt("<i", 4)
        elif low == 0x0C:
            v = self.fmt("<q", 8)
        else:
            raise ValueError(f"eh_frame: pointer encoding {enc:#x} not supported")
        if enc & 0x70 == 0x10:  # pcrel
            v += here
        return v & 0xFFFFFFFFFFFFFFFF


class EhFrame:
    """``.eh_frame`` of one object: ``data`` holds the file's bytes, the sections are
    given as (file offset, size, vaddr)."""

    def __init__(
        self,
        data: Buffer,
        *,
        eh_frame: tuple[int, int, int],
        eh_frame_hdr: tuple[int, int, int] | None,
    ) -> None:
        self._data = data
        self._frame_off, self._frame_size, self._frame_vaddr = eh_frame
        self._table: list[tuple[int, int]] = []  # (initial location, FDE vaddr), sorted
        if eh_frame_hdr is not None:
            self._read_hdr(*eh_frame_hdr)
        else:
            self._scan()
        self._starts = [t[0] for t in self._table]
        self._cies: dict[int, tuple[int, int, int, bytes, int]] = {}

    def _read_hdr(self, off: int, _size: int, vaddr: int) -> None:
        r = _Reader(self._data, off)
        _version = r.u8()
        ptr_enc, count_enc, table_enc = r.u8(), r.u8(), r.u8()
        r.encoded(ptr_enc, vaddr + (r.pos - off))
        count = r.encoded(count_enc, vaddr + (r.pos - off))
        if table_enc != 0x3B:  # datarel | sdata4: what every GNU linker writes
            self._scan()
            return
        raw = struct.unpack_from(f"<{2 * count}i", self._data, r.pos)
        self._table = [(vaddr + raw[i], vaddr + raw[i + 1]) for i in range(0, len(raw), 2)]
        self._table.sort()

    def _scan(self) -> None:
        """No header: walk every entry (slower, once)."""
        pos = self._frame_off
        end = self._frame_off + self._frame_size
        table = []
        while pos + 8 <= end:
            (length,) = struct.unpack_from("<I", self._data, pos)
            if length == 0:
                break
            if length == 0xFFFFFFFF:
                break  # 64-bit DWARF: not produced for x86-64 eh_frame
            (cie_ptr,) = struct.unpack_from("<I", self._data, pos + 4)
            if cie_ptr != 0:
                fde_vaddr = self._frame_vaddr + (pos - self._frame_off)
                try:
                    start, _rng, _instr, _cie = self._fde(fde_vaddr)
                    table.append((start, fde_vaddr))
                except (ValueError, struct.error, IndexError):
                    pass
            pos += 4 + length
        table.sort()
        self._table = table

    def _off(self, vaddr: int) -> int:
        return self._frame_off + (vaddr - self._frame_vaddr)

    def _cie(self, cie_off: int) -> tuple[int, int, int, bytes, int]:
        """(code align, data align, FDE pointer encoding, initial instructions, aug 'z'?)"""
        cached = self._cies.get(cie_off)
        if cached is not None:
            return cached
        r = _Reader(self._data, cie_off)
        length = r.fmt("<I", 4)
        end = r.pos + length
        r.fmt("<I", 4)  # CIE id 0
        version = r.u8()
        aug = b""
        while (c := r.u8()) != 0:
            aug += bytes([c])
        if b"eh" in aug:
            r.fmt("<Q", 8)
        code_align = r.uleb()
        data_align = r.sleb()
        if version == 1:
            r.u8()
        else:
            r.uleb()
        fde_enc = 0
        has_z = 0
        if aug.startswith(b"z"):
            has_z = 1
            aug_len = r.uleb()
            aug_end = r.pos + aug_len
            for ch in aug[1:]:
                if ch == ord("R"):
                    fde_enc = r.u8()
                elif ch == ord("P"):
                    penc = r.u8()
                    base = self._frame_vaddr + (r.pos - self._frame_off)
                    r.encoded(penc, base)
                elif ch == ord("L"):
                    r.u8()
            r.pos = aug_end
        out = (code_align, data_align, fde_enc, bytes(r.data[r.pos : end]), has_z)
        self._cies[cie_off] = out
        return out

    def _fde(self, fde_vaddr: int) -> tuple[int, int, bytes, tuple[int, int, int, bytes, int]]:
        off = self._off(fde_vaddr)
        r = _Reader(self._data, off)
        length = r.fmt("<I", 4)
        end = r.pos + length
        cie_ptr_pos = r.pos
        cie_ptr = r.fmt("<I", 4)
        cie = self._cie(cie_ptr_pos - cie_ptr)
        enc = cie[2]
        start = r.encoded(enc, self._frame_vaddr + (r.pos - self._frame_off))
        rng = r.encoded(enc & 0x0F, 0)
        if cie[4]:
            r.pos += r.uleb()
        return start, rng, bytes(r.data[r.pos : end]), cie

    def cfa_register(self, pc: int) -> int | None:
        """The DWARF register the CFA is computed from at ``pc`` (RSP or RBP), or None."""
        i = bisect.bisect_right(self._starts, pc) - 1
        if i < 0:
            return None
        try:
            start, rng, instr, cie = self._fde(self._table[i][1])
            if not start <= pc < start + rng:
                return None
            code_align = cie[0]
            state = _run(cie[3], code_align, start, None, (RSP, 8))
            if state is None:
                return None
            state = _run(instr, code_align, start, pc, state)
        except (ValueError, struct.error, IndexError):
            return None
        return None if state is None else state[0]


def _run(
    instr: bytes, code_align: int, loc: int, until: int | None, state: tuple[int, int]
) -> tuple[int, int] | None:
    """Execute CFA instructions from ``loc`` while the location stays <= ``until``."""
    r = _Reader(instr, 0)
    reg, off = state
    stack: list[tuple[int, int]] = []
    n = len(instr)
    while r.pos < n:
        op = r.u8()
        hi = op & 0xC0
        if hi == 0x40:  # advance_loc
            loc += (op & 0x3F) * code_align
            if until is not None and loc > until:
                break
            continue
        if hi == 0x80:  # offset
            r.uleb()
            continue
        if hi == 0xC0:  # restore
            continue
        if op in (0x02, 0x03, 0x04):  # advance_loc1/2/4
            if op == 0x02:
                delta = r.u8()
            elif op == 0x03:
                delta = r.fmt("<H", 2)
            else:
                delta = r.fmt("<I", 4)
            loc += delta * code_align
            if until is not None and loc > until:
                break
        elif op == 0x01:  # set_loc: absolute, encoding unknown here
            return None
        elif op in (0x00,):
            pass
        elif op in (0x05, 0x09, 0x14):  # offset_extended, register, val_offset
            r.uleb()
            r.uleb()
        elif op in (0x06, 0x07, 0x08):  # restore_ext, undefined, same_value
            r.uleb()
        elif op == 0x0A:
            stack.append((reg, off))
        elif op == 0x0B:
            if stack:
                reg, off = stack.pop()
        elif op == 0x0C:
            reg, off = r.uleb(), r.uleb()
        elif op == 0x0D:
            reg = r.uleb()
        elif op == 0x0E:
            off = r.uleb()
        elif op == 0x0F:  # def_cfa_expression: PLT stubs and the like
            return None
        elif op in (0x10, 0x16):  # expression, val_expression
            r.uleb()
            r.pos += r.uleb()
        elif op in (0x11, 0x15):  # offset_extended_sf, val_offset_sf
            r.uleb()
            r.sleb()
        elif op == 0x12:
            reg, off = r.uleb(), r.sleb()
        elif op == 0x13:
            off = r.sleb()
        elif op == 0x2E:  # GNU_args_size
            r.uleb()
        elif op == 0x2F:
            r.uleb()
            r.uleb()
        else:
            return None
    return reg, off
