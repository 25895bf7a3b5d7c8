"""CPython's allocator read out of a live process, without stopping it.

Owned here: which file holds the interpreter (libpython's mapping, else the
executable), its load bias (where it is mapped minus its first ``PT_LOAD``'s
address), and the read itself through /proc/PID/mem: the allocator's counters at
the addresses ``_gdbscript``'s layout gives, the arena table in one read, then
every carved pool's header (its block count and size class), at most
``MAX_ARENAS`` arenas. The process runs on meanwhile: the figures are a live read,
consistent to within what the process changes during it (milliseconds); an arena
freed under the walk is skipped.

Synchronous (callers run it in a thread).
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_ARENAS = 1024
"""Arenas walked at most (1 GiB with 3.10+'s 1 MiB arenas): bounds the read's time."""
_POOL_HEADER = 40  # ref.count (at 0) ... szidx (at 36): the same in 3.8 .. 3.13
_LIBPY = re.compile(r"/libpython3\.(\d+)[^/]*\.so[^/]*$")
_MAPS = re.compile(r"^([0-9a-f]+)-[0-9a-f]+ \S{4} ([0-9a-f]+) \S+ \d+\s+(/.*)$")


class ReadError(Exception):
    """The process's memory or its interpreter's file could not be read as expected."""


@dataclass(frozen=True, slots=True)
class Interpreter:
    path: str
    """The file as the process sees it (libpython3.X.so or the executable)."""
    mapped_at: int
    """Where its first mapping (file offset 0) starts."""


def interpreter(maps: str, exe: str | None) -> Interpreter | None:
    """libpython's mapping when the interpreter is a shared library, else the
    executable's; None when neither is mapped."""
    first: dict[str, int] = {}
    for line in maps.splitlines():
        m = _MAPS.match(line)
        if m and int(m.group(2), 16) == 0:
            first.setdefault(m.group(3).strip(), int(m.group(1), 16))
    for path, start in first.items():
        if _LIBPY.search(path):
            return Interpreter(path, start)
    if exe and exe in first:
        return Interpreter(exe, first[exe])
    return None


def first_load_vaddr(elf: bytes) -> int:
    """The lowest ``PT_LOAD`` virtual address of a 64-bit little-endian ELF (its
    header and program headers, the first few KiB of the file)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ReadError("not a 64-bit little-endian ELF file")
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    lows = []
    for i in range(phnum):
        off = phoff + i * phentsize
        if off + 0x18 > len(elf):
            break
        (p_type,) = struct.unpack_from("<I", elf, off)
        if p_type == 1:  # PT_LOAD
            lows.append(struct.unpack_from("<Q", elf, off + 0x10)[0])
    if not lows:
        raise ReadError("no PT_LOAD segment in its program headers")
    return int(min(lows)) & ~0xFFF


class _Mem:
    def __init__(self, pid: int) -> None:
        try:
            self.fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
        except OSError as e:
            raise ReadError(f"cannot open /proc/{pid}/mem: {e.strerror}") from e

    def read(self, addr: int, n: int) -> bytes:
        try:
            data = os.pread(self.fd, n, addr)
        except OSError as e:
            raise ReadError(f"cannot read {n} bytes at {addr:#x}: {e.strerror}") from e
        if len(data) != n:
            raise ReadError(f"short read at {addr:#x}")
        return data

    def uint(self, addr: int, size: int) -> int:
        return int.from_bytes(self.read(addr, size), "little")

    def close(self) -> None:
        os.close(self.fd)


def read(pid: int, layout: dict[str, Any], *, bias: int, limit: int = MAX_ARENAS) -> dict[str, Any]:
    """The allocator's figures, as ``_parse.pymalloc_doc`` takes them."""
    minor = int(layout["minor"])
    mem = _Mem(pid)
    try:
        if "globals" in layout:
            where = {n: (bias + a, s) for n, (a, s) in layout["globals"].items()}
        else:
            if "mgmt" in layout:
                mgmt = bias + int(layout["mgmt"])
            else:
                state = mem.uint(bias + int(layout["obmalloc_ptr"]), 8)
                if state == 0:
                    raise ReadError("the interpreter's allocator state is not set up yet")
                mgmt = state + int(layout["mgmt_offset"])
            where = {n: (mgmt + o, s) for n, (o, s) in layout["fields"].items()}
        value = {n: mem.uint(a, s) for n, (a, s) in where.items()}
        arena_bytes, pool_bytes = (1 << 20, 1 << 14) if minor >= 10 else (1 << 18, 1 << 12)
        size = int(layout["arena_object_size"])
        maxarenas = value["maxarenas"]
        if maxarenas > 1 << 24:
            raise ReadError(f"an implausible arena table ({maxarenas} entries): a wrong layout?")
        table = mem.read(value["arenas"], size * maxarenas) if maxarenas else b""
        blocks: dict[int, int] = {}
        pools = walked = 0
        for i in range(maxarenas):
            address, pool_address = struct.unpack_from("<QQ", table, i * size)
            if address == 0:
                continue
            if walked >= limit:
                break
            walked += 1
            pool = (address + pool_bytes - 1) & ~(pool_bytes - 1)
            while pool < pool_address:
                try:
                    head = mem.read(pool, _POOL_HEADER)
                except ReadError:
                    break  # freed under the walk
                (count,) = struct.unpack_from("<I", head, 0)
                (szidx,) = struct.unpack_from("<I", head, 36)
                pools += 1
                if count:
                    block = (szidx + 1) << 4
                    blocks[block] = blocks.get(block, 0) + count
                pool += pool_bytes
    finally:
        mem.close()
    return {
        "version": f"3.{minor}",
        "arenas": value["narenas_currently_allocated"],
        "highwater": value["narenas_highwater"],
        "allocated_total": value["ntimes_arena_allocated"],
        "arena_bytes": arena_bytes,
        "pool_bytes": pool_bytes,
        "pools": pools,
        "walked": walked,
        "blocks_by_size": {str(k): v for k, v in sorted(blocks.items())},
    }


def elf_head(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(8192)
    except OSError as e:
        raise ReadError(f"cannot read {path}: {e.strerror}") from e
