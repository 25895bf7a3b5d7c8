"""ELF symbols of a process's executable and libraries, read through ``/proc/PID/root``.

Owns: which objects a process maps (``/proc/PID/maps``), resolving a library name
(``libc``) to the path the process sees, checking a file is ELF, listing the
functions (``.symtab`` and ``.dynsym``) and USDT probes (``.note.stapsdt``) of
an object, and turning raw user-stack addresses into ``symbol+0xoff``. A stripped Go
binary's functions come from its ``.gopclntab`` (:mod:`agent.symbolize.gopclntab`), so
they can be listed, probed and named in off-CPU and recorder stacks too.
Parsing uses pyelftools; results are cached per file identity (device, inode,
size, mtime) since libraries are shared by every process of a pod.
"""

from __future__ import annotations

import bisect
import difflib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

from agent import procfs
from agent.errors import Invalid, NotFound
from agent.symbolize.gopclntab import PclntabError, open_table

if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

ELF_MAGIC = b"\x7fELF"


@dataclass(frozen=True, slots=True)
class Symbol:
    name: str
    address: int
    size: int
    kind: Literal["function", "usdt"]
    args: tuple[str, ...] = ()
    """USDT only: the note's argument specs (``8@%rbp``, ``-4@%eax``), one per argN."""
    semaphore: int = 0
    """USDT only: the semaphore's address (0: none); a tracer must be given the pid to set it."""


@dataclass(frozen=True, slots=True)
class ObjectSymbols:
    functions: tuple[Symbol, ...]  # sorted by address
    usdt: tuple[Symbol, ...]
    segments: tuple[tuple[int, int, int], ...]  # (p_offset, p_vaddr, p_filesz) of PT_LOAD
    addresses: tuple[int, ...] = ()  # the functions' start addresses, for bisect

    def names(self) -> set[str]:
        return {s.name for s in self.functions}

    def lookup(self, name: str) -> Symbol | None:
        for s in self.functions:
            if s.name == name:
                return s
        return None

    def probe(self, name: str) -> Symbol | None:
        """The USDT probe ``provider:name`` (the first note of that name)."""
        for s in self.usdt:
            if s.name == name:
                return s
        return None

    def closest(self, name: str, n: int = 5) -> list[str]:
        return difflib.get_close_matches(name, sorted(self.names()), n=n, cutoff=0.6)

    def function_at(self, vaddr: int) -> Symbol | None:
        i = bisect.bisect_right(self.addresses, vaddr) - 1
        if i < 0:
            return None
        s = self.functions[i]
        if s.size and vaddr >= s.address + s.size:
            return None
        return s

    def symbolize(self, vaddr: int) -> str | None:
        s = self.function_at(vaddr)
        return None if s is None else f"{s.name}+{vaddr - s.address:#x}"

    def vaddr_to_offset(self, vaddr: int) -> int | None:
        """Where in the file the byte at ``vaddr`` is (None: in no loaded segment's data)."""
        for off, start, size in self.segments:
            if start <= vaddr < start + size:
                return vaddr - start + off
        return None

    def offset_to_vaddr(self, offset: int) -> int:
        for off, vaddr, size in self.segments:
            if off <= offset < off + size:
                return offset - off + vaddr
        return offset


def is_elf(host_path: Path) -> bool:
    try:
        with host_path.open("rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def _parse_stapsdt(desc: bytes, is64: bool) -> tuple[int, str, str, int, str] | None:
    """A stapsdt note: pc, base, semaphore, then provider, name and argument specs."""
    width = 8 if is64 else 4
    if len(desc) < 3 * width:
        return None
    pc, _base, semaphore = struct.unpack_from("<QQQ" if is64 else "<III", desc, 0)
    rest = desc[3 * width :].split(b"\0")
    if len(rest) < 2:
        return None
    args = rest[2].decode("ascii", "replace") if len(rest) > 2 else ""
    return (
        pc,
        rest[0].decode("ascii", "replace"),
        rest[1].decode("ascii", "replace"),
        semaphore,
        args,
    )


_ELF64_SYM = struct.Struct("<IBBHQQ")  # st_name, st_info, st_other, st_shndx, st_value, st_size
_STT_FUNC, _STT_GNU_IFUNC = 2, 10


def _functions64(
    f: BinaryIO, elf: ELFFile, section: SymbolTableSection
) -> Iterator[tuple[str, int, int]]:
    """(name, address, size) of the defined functions of a 64-bit little-endian symbol
    table, read with one ``struct`` pass: pyelftools' per-symbol parse took seconds for
    a large table (a libc debug file's), on the flight recorder's path."""
    strtab = elf.get_section(section["sh_link"])
    f.seek(strtab["sh_offset"])
    names = f.read(strtab["sh_size"])
    f.seek(section["sh_offset"])
    data = f.read(section["sh_size"])
    data = data[: len(data) - len(data) % _ELF64_SYM.size]
    for st_name, st_info, _other, shndx, value, size in _ELF64_SYM.iter_unpack(data):
        if (st_info & 0xF) not in (_STT_FUNC, _STT_GNU_IFUNC) or not shndx or not value:
            continue
        end = names.find(b"\0", st_name)
        name = names[st_name : end if end >= 0 else len(names)]
        if name:
            yield name.decode("utf-8", "replace"), value, size


@lru_cache(maxsize=64)
def _load(path: str, _identity: tuple[int, int, int, int]) -> ObjectSymbols:
    functions: dict[tuple[str, int], Symbol] = {}
    usdt: list[Symbol] = []
    segments: list[tuple[int, int, int]] = []
    from elftools.elf.elffile import ELFFile  # on first use: ~3 MB of an idle agent
    from elftools.elf.sections import NoteSection, SymbolTableSection

    with open(path, "rb") as f:
        elf = ELFFile(f)
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_LOAD":
                segments.append((seg["p_offset"], seg["p_vaddr"], seg["p_filesz"]))
        fast = elf.elfclass == 64 and elf.little_endian
        for section in elf.iter_sections():
            if isinstance(section, SymbolTableSection):
                if fast:
                    for name, value, size in _functions64(f, elf, section):
                        name = name.split("@", 1)[0]
                        functions[(name, value)] = Symbol(name, value, size, "function")
                    continue
                for sym in section.iter_symbols():
                    if (
                        sym["st_info"]["type"] in ("STT_FUNC", "STT_GNU_IFUNC")
                        and sym["st_shndx"] != "SHN_UNDEF"
                        and sym["st_value"]
                        and sym.name
                    ):
                        name = sym.name.split("@", 1)[0]
                        key = (name, sym["st_value"])
                        functions[key] = Symbol(name, sym["st_value"], sym["st_size"], "function")
            elif isinstance(section, NoteSection) and section.name == ".note.stapsdt":
                data = section.data()
                pos = 0
                while pos + 12 <= len(data):
                    namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
                    pos += 12
                    name_end = pos + ((namesz + 3) & ~3)
                    desc = data[name_end : name_end + descsz]
                    pos = name_end + ((descsz + 3) & ~3)
                    if ntype == 3:
                        parsed = _parse_stapsdt(desc, elf.elfclass == 64)
                        if parsed:
                            pc, provider, probe, sem, spec = parsed
                            usdt.append(
                                Symbol(
                                    f"{provider}:{probe}",
                                    pc,
                                    0,
                                    "usdt",
                                    args=tuple(spec.split()),
                                    semaphore=sem,
                                )
                            )
        has_symtab = any(s.name == ".symtab" for s in elf.iter_sections())
        if not has_symtab and elf.get_section_by_name(".gopclntab") is not None:
            # Stripped Go: every function is still named in the pclntab.
            sections = {
                s.name: (s["sh_offset"], s["sh_size"], s["sh_addr"])
                for s in elf.iter_sections()
                if s["sh_type"] != "SHT_NOBITS"
            }
            try:
                tab = open_table(f, sections, pie=elf["e_type"] == "ET_DYN")
                for name, entry, size in tab.functions():
                    functions.setdefault((name, entry), Symbol(name, entry, size, "function"))
            except (PclntabError, struct.error, IndexError):
                pass  # a corrupt pclntab: the dynamic symbols (if any) stay
    ordered = tuple(sorted(functions.values(), key=lambda s: (s.address, s.name)))
    return ObjectSymbols(ordered, tuple(usdt), tuple(segments), tuple(s.address for s in ordered))


def object_symbols(host_path: Path, *, field: str = "binary") -> ObjectSymbols:
    """The functions and USDT probes of one ELF file (422 if it is not ELF)."""
    try:
        st = os.stat(host_path)
    except OSError as e:
        raise NotFound(
            f"{field}: {host_path.name} does not exist in the process: {e.strerror}"
        ) from e
    if not is_elf(host_path):
        raise Invalid(f"{field}: {host_path.name} is not an ELF file", field=field)
    from elftools.common.exceptions import ELFError

    try:
        return _load(str(host_path), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    except (ELFError, OSError, ValueError, struct.error) as e:
        raise Invalid(
            f"{field}: cannot read ELF symbols of {host_path.name}: {e}", field=field
        ) from e


@dataclass(frozen=True, slots=True)
class Mapping:
    start: int
    end: int
    offset: int
    path: str  # as the process sees it
    executable: bool


def maps(pid: int) -> list[Mapping]:
    """File-backed mappings of ``pid`` (paths as the process sees them)."""
    try:
        text = (procfs.PROC / str(procfs.require_pid(pid)) / "maps").read_text()
    except OSError as e:
        raise NotFound(f"cannot read the memory maps of pid {pid}: {e.strerror}") from e
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6 or not parts[5].startswith("/") or parts[5].endswith(" (deleted)"):
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        out.append(Mapping(lo, hi, int(parts[2], 16), parts[5], "x" in parts[1]))
    return out


def mapped_objects(pid: int) -> list[str]:
    """Executable objects mapped by ``pid``: the executable first, then libraries."""
    seen: list[str] = []
    for m in maps(pid):
        if m.executable and m.path not in seen:
            seen.append(m.path)
    exe = procfs.exe_path(pid)
    if exe in seen:
        seen.remove(exe)
    return [exe, *seen]


def resolve_library(pid: int, name: str) -> str:
    """``libc`` -> ``/usr/lib/x86_64-linux-gnu/libc.so.6`` as ``pid`` sees it (404 if unmapped)."""
    objects = mapped_objects(pid)[1:]
    for path in objects:
        base = os.path.basename(path)
        for candidate in (name, f"lib{name}"):
            if base == candidate or (
                base.startswith(candidate)
                and base[len(candidate) : len(candidate) + 1] in (".", "-")
            ):
                return path
    names = [os.path.basename(p) for p in objects]
    raise NotFound(
        f"binary: no library {name!r} is loaded by pid {pid}",
        loaded=names,
    )


def _locate(
    pid: int, mappings: list[Mapping], address: int
) -> tuple[ObjectSymbols | None, int, str] | None:
    """The object holding ``address`` (None: unreadable), its vaddr there, its base name."""
    for m in mappings:
        if m.start <= address < m.end:
            base = os.path.basename(m.path)
            try:
                syms = object_symbols(procfs.resolve_in_root(pid, m.path))
            except (NotFound, Invalid):
                return None, address - m.start + m.offset, base
            return syms, syms.offset_to_vaddr(address - m.start + m.offset), base
    return None


def _mappings(pid: int) -> list[Mapping]:
    try:
        return maps(pid)
    except NotFound:
        return []


def symbolize(pid: int, addresses: list[int]) -> list[str]:
    """Raw user addresses of ``pid`` as ``symbol+0xoff (library)``, or hex where unknown."""
    mappings = _mappings(pid)
    out = []
    for a in addresses:
        found = _locate(pid, mappings, a)
        label = f"{a:#x}"
        if found is not None:
            syms, vaddr, base = found
            if syms is not None:
                name = syms.symbolize(vaddr)
                label = f"{name} ({base})" if name else f"{base}+{vaddr:#x}"
        out.append(label)
    return out
