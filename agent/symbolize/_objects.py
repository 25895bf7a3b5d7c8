"""One ELF object as the symbolizer needs it: its kind, build-id, debuglink, symbols,
Go pclntab, unwind table and code bytes, loaded once per file identity.

Owns reading an object's ELF facts (section headers only through pyelftools; the
bytes through an ``mmap``), turning a file offset into a link-time address, reading
code at an address (the call-site check of the leaf fix-up) and the object's own
function symbols (via :mod:`agent.symbols`, which caches them too).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from agent import symbols
from agent.errors import Invalid, NotFound
from agent.symbolize._ehframe import EhFrame
from agent.symbolize.gopclntab import GoTable, PclntabError, open_table

if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile

__all__ = ["ElfObject", "load_object", "read_build_id"]


@dataclass(eq=False)
class ElfObject:
    path: str  # the host path it was read from
    pie: bool  # ET_DYN: loaded at a bias
    build_id: str | None
    debuglink: tuple[str, int] | None  # (file name, CRC32)
    has_symtab: bool
    go: GoTable | None
    go_error: str | None  # why a Go binary's pclntab is unusable
    is_go: bool
    sections: dict[str, tuple[int, int, int]]  # name -> (file offset, size, vaddr)
    segments: tuple[tuple[int, int, int], ...]  # PT_LOAD (p_offset, p_vaddr, p_filesz)
    data: mmap.mmap | None
    _eh: EhFrame | bool | None = field(default=False, repr=False)
    _syms: symbols.ObjectSymbols | bool | None = field(default=False, repr=False)

    def offset_to_vaddr(self, offset: int) -> int:
        for off, vaddr, size in self.segments:
            if off <= offset < off + size:
                return offset - off + vaddr
        return offset

    def read(self, vaddr: int, n: int) -> bytes | None:
        """``n`` bytes of the file at link-time address ``vaddr`` (None outside)."""
        if self.data is None:
            return None
        for off, seg_vaddr, size in self.segments:
            if seg_vaddr <= vaddr and vaddr + n <= seg_vaddr + size:
                start = off + vaddr - seg_vaddr
                return bytes(self.data[start : start + n])
        return None

    def eh_frame(self) -> EhFrame | None:
        if self._eh is False:
            eh = self.sections.get(".eh_frame")
            self._eh = None
            if eh is not None and self.data is not None:
                try:
                    self._eh = EhFrame(
                        self.data, eh_frame=eh, eh_frame_hdr=self.sections.get(".eh_frame_hdr")
                    )
                except (ValueError, struct.error, IndexError):
                    self._eh = None
        return self._eh if isinstance(self._eh, EhFrame) else None

    def functions(self) -> symbols.ObjectSymbols | None:
        """The object's own ``.symtab``/``.dynsym`` functions (None if unreadable)."""
        if self._syms is False:
            try:
                self._syms = symbols.object_symbols(Path(self.path))
            except (Invalid, NotFound):
                self._syms = None
        return self._syms if isinstance(self._syms, symbols.ObjectSymbols) else None


def read_build_id(elf: ELFFile) -> str | None:
    from elftools.elf.sections import NoteSection

    sec = elf.get_section_by_name(".note.gnu.build-id")
    if not isinstance(sec, NoteSection):
        return None
    for note in sec.iter_notes():
        if note["n_type"] == "NT_GNU_BUILD_ID":
            return str(note["n_desc"])
    return None


def _debuglink(elf: ELFFile) -> tuple[str, int] | None:
    sec = elf.get_section_by_name(".gnu_debuglink")
    if sec is None:
        return None
    data = sec.data()
    end = data.find(b"\0")
    if end <= 0:
        return None
    crc_at = (end + 4) & ~3
    if crc_at + 4 > len(data):
        return None
    (crc,) = struct.unpack_from("<I", data, crc_at)
    return data[:end].decode("utf-8", "replace"), crc


@lru_cache(maxsize=128)
def _load(path: str, _identity: tuple[int, int, int, int]) -> ElfObject:
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile  # on first use: ~3 MB of an idle agent

    with open(path, "rb") as f:
        elf = ELFFile(f)
        if elf.elfclass != 64 or not elf.little_endian:
            raise ELFError("only 64-bit little-endian objects are symbolized here")
        sections = {
            s.name: (s["sh_offset"], s["sh_size"], s["sh_addr"])
            for s in elf.iter_sections()
            if s["sh_type"] != "SHT_NOBITS"
        }
        segments = tuple(
            (s["p_offset"], s["p_vaddr"], s["p_filesz"])
            for s in elf.iter_segments()
            if s["p_type"] == "PT_LOAD"
        )
        pie = elf["e_type"] == "ET_DYN"
        build_id = read_build_id(elf)
        link = _debuglink(elf)
        is_go = ".gopclntab" in sections or ".note.go.buildid" in sections
        go: GoTable | None = None
        go_error: str | None = None
        if is_go:
            try:
                go = open_table(f, sections, pie=pie)
            except (PclntabError, struct.error, ValueError, IndexError) as e:
                go_error = str(e)
        data: mmap.mmap | None = None
        if os.fstat(f.fileno()).st_size:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return ElfObject(
        path=path,
        pie=pie,
        build_id=build_id,
        debuglink=link,
        has_symtab=".symtab" in sections,
        go=go,
        go_error=go_error,
        is_go=is_go,
        sections=sections,
        segments=segments,
        data=data,
    )


def load_object(host_path: Path) -> ElfObject | None:
    """The object at ``host_path`` (cached by device, inode, size and mtime), None if it
    is missing or not a readable 64-bit ELF file."""
    from elftools.common.exceptions import ELFError

    try:
        st = os.stat(host_path)
        if not symbols.is_elf(host_path):
            return None
        return _load(str(host_path), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    except (OSError, ELFError, ValueError, struct.error):
        return None
