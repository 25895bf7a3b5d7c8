"""Reading what the kernel and the runtimes print about memory (pure: text in, models out).

Owned here: /proc/PID/smaps_rollup and /proc/PID/smaps (totals, mappings, by kind),
the JVM's ``GC.heap_info`` and ``GC.class_histogram`` answers (through jattach), and
the layout line the agent's gdb program prints from libpython's debug info, and
what the live read of CPython's allocator found.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from agent.memory._model import (
    ClassHistogram,
    HistogramEntry,
    JavaHeap,
    KindTotal,
    MappingKind,
    MemoryMapping,
    MemoryTotals,
    PythonAllocator,
    SizeClass,
)

_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) (\S+) (\d+)\s*(.*)$")
_FIELD = re.compile(r"^(\w+):\s+(\d+) kB$")
_SPECIAL = ("[vvar]", "[vdso]", "[vsyscall]", "[vvar_vclock]", "[uprobes]")


class ParseError(ValueError):
    """The text is not what the kernel or the runtime prints."""


def _kb_fields(lines: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in lines:
        m = _FIELD.match(line)
        if m:
            out[m.group(1)] = int(m.group(2)) * 1024
    return out


def rollup(text: str) -> MemoryTotals:
    """/proc/PID/smaps_rollup -> totals. An empty file (a kernel thread, a zombie) is 0."""
    f = _kb_fields(text.splitlines())
    rss = f.get("Rss", 0)
    anon = f.get("Anonymous", 0)
    return MemoryTotals(
        rss_bytes=rss,
        pss_bytes=f.get("Pss", 0),
        swap_bytes=f.get("Swap", 0),
        swap_pss_bytes=f.get("SwapPss", 0),
        anonymous_bytes=anon,
        file_bytes=max(0, rss - anon),
        pss_anon_bytes=f.get("Pss_Anon"),
        pss_file_bytes=f.get("Pss_File"),
        pss_shmem_bytes=f.get("Pss_Shmem"),
        private_bytes=f.get("Private_Clean", 0) + f.get("Private_Dirty", 0),
        shared_bytes=f.get("Shared_Clean", 0) + f.get("Shared_Dirty", 0),
        locked_bytes=f.get("Locked", 0),
    )


@dataclass
class _Raw:
    start: int
    end: int
    perms: str
    inode: int
    path: str
    fields: dict[str, int] = field(default_factory=dict)


_WANTED = frozenset({"Rss", "Pss", "Anonymous", "Swap"})


def _raw_mappings(text: str) -> Iterator[_Raw]:
    # About 25 lines per mapping: field lines are split, not matched (a regex per line
    # was most of the cost on a process with hundreds of mappings).
    current: _Raw | None = None
    for line in text.splitlines():
        key, colon, rest = line.partition(":")
        if colon and " " not in key:
            if current is not None and key in _WANTED:
                with contextlib.suppress(ValueError, IndexError):
                    current.fields[key] = int(rest.split(None, 1)[0]) * 1024
            continue
        m = _HEADER.match(line)
        if m:
            if current is not None:
                yield current
            current = _Raw(
                int(m.group(1), 16),
                int(m.group(2), 16),
                m.group(3),
                int(m.group(6)),
                m.group(7).strip(),
            )
    if current is not None:
        yield current


def kind_of(path: str, inode: int) -> MappingKind:
    if path == "[heap]":
        return "heap"
    if path.startswith("[stack"):
        return "stack"
    if path in _SPECIAL:
        return "special"
    if path.startswith(("/dev/shm/", "/memfd:", "/SYSV")):
        return "shmem"
    if inode == 0 or not path or path.startswith("[anon"):
        return "anon"
    return "file"


def _model(r: _Raw) -> MemoryMapping:
    return MemoryMapping(
        start=f"{r.start:x}",
        end=f"{r.end:x}",
        perms=r.perms,
        kind=kind_of(r.path, r.inode),
        path=r.path,
        size_bytes=r.end - r.start,
        rss_bytes=r.fields.get("Rss", 0),
        pss_bytes=r.fields.get("Pss", 0),
        anonymous_bytes=r.fields.get("Anonymous", 0),
        swap_bytes=r.fields.get("Swap", 0),
    )


def mappings(text: str) -> list[MemoryMapping]:
    """/proc/PID/smaps -> one entry per mapping, in address order."""
    return [_model(r) for r in _raw_mappings(text)]


def summary(text: str, top: int) -> tuple[int, list[KindTotal], list[MemoryMapping]]:
    """/proc/PID/smaps -> how many mappings, totals by kind, the ``top`` largest: what a
    snapshot answers, with models made for the largest only (hundreds of mappings)."""
    raws = list(_raw_mappings(text))
    acc: dict[MappingKind, list[int]] = {}
    for r in raws:
        t = acc.setdefault(kind_of(r.path, r.inode), [0, 0, 0, 0, 0])
        t[0] += 1
        t[1] += r.end - r.start
        t[2] += r.fields.get("Rss", 0)
        t[3] += r.fields.get("Pss", 0)
        t[4] += r.fields.get("Swap", 0)
    kinds = sorted(
        (
            KindTotal(kind=k, mappings=n, size_bytes=z, rss_bytes=rs, pss_bytes=ps, swap_bytes=sw)
            for k, (n, z, rs, ps, sw) in acc.items()
        ),
        key=lambda t: (-t.rss_bytes, t.kind),
    )
    big = sorted(raws, key=lambda r: (-r.fields.get("Rss", 0), r.start - r.end, r.start))[:top]
    return len(raws), kinds, [_model(r) for r in big]


def by_kind(maps: list[MemoryMapping]) -> list[KindTotal]:
    acc: dict[MappingKind, KindTotal] = {}
    for m in maps:
        t = acc.get(m.kind)
        if t is None:
            t = acc[m.kind] = KindTotal(
                kind=m.kind, mappings=0, size_bytes=0, rss_bytes=0, pss_bytes=0, swap_bytes=0
            )
        t.mappings += 1
        t.size_bytes += m.size_bytes
        t.rss_bytes += m.rss_bytes
        t.pss_bytes += m.pss_bytes
        t.swap_bytes += m.swap_bytes
    return sorted(acc.values(), key=lambda t: (-t.rss_bytes, t.kind))


def largest(maps: list[MemoryMapping], top: int) -> list[MemoryMapping]:
    return sorted(maps, key=lambda m: (-m.rss_bytes, -m.size_bytes, m.start))[:top]


# --- the JVM -----------------------------------------------------------------------

_JATTACH_NOISE = ("Connected to remote JVM", "JVM response code = ")
_HEAP_LINE = re.compile(r"^\s*(.+?)\s+total (\d+)K, used (\d+)K")
_META_LINE = re.compile(r"^\s*Metaspace\s+used (\d+)K, committed (\d+)K")
_HISTO_LINE = re.compile(r"^\s*(\d+):\s+(\d+)\s+(\d+)\s+(\S+)(?:\s+\((.+)\))?\s*$")
_HISTO_TOTAL = re.compile(r"^Total\s+(\d+)\s+(\d+)\s*$")


def jattach_answer(out: str) -> str:
    """The JVM's answer without jattach's own header lines."""
    return "\n".join(ln for ln in out.splitlines() if not ln.startswith(_JATTACH_NOISE)).strip("\n")


def heap_info(out: str) -> JavaHeap:
    """``jattach PID jcmd GC.heap_info``: the heap line (collector, total, used) and
    Metaspace's; the rest of the text is kept as printed (it is collector-specific)."""
    text = jattach_answer(out)
    collector, committed, used = "", None, None
    meta_used = meta_committed = None
    for line in text.splitlines():
        m = _HEAP_LINE.match(line)
        if m and not collector and not line.strip().startswith(("Metaspace", "class space")):
            collector = m.group(1).strip()
            committed, used = int(m.group(2)) * 1024, int(m.group(3)) * 1024
            continue
        mm = _META_LINE.match(line)
        if mm:
            meta_used, meta_committed = int(mm.group(1)) * 1024, int(mm.group(2)) * 1024
    if not collector:
        raise ParseError(f"no heap line in the JVM's GC.heap_info answer: {text[:300]!r}")
    return JavaHeap(
        collector=collector,
        committed_bytes=committed,
        used_bytes=used,
        metaspace_used_bytes=meta_used,
        metaspace_committed_bytes=meta_committed,
        text=text,
    )


def class_histogram(out: str, *, pid: int, live: bool, top: int) -> ClassHistogram:
    """``jattach PID jcmd GC.class_histogram``: rank, instances, bytes, class (module)."""
    entries: list[HistogramEntry] = []
    total: tuple[int, int] | None = None
    for line in jattach_answer(out).splitlines():
        m = _HISTO_LINE.match(line)
        if m:
            entries.append(
                HistogramEntry(
                    rank=int(m.group(1)),
                    instances=int(m.group(2)),
                    bytes=int(m.group(3)),
                    class_name=m.group(4),
                    module=m.group(5),
                )
            )
            continue
        t = _HISTO_TOTAL.match(line)
        if t:
            total = (int(t.group(1)), int(t.group(2)))
    if total is None:
        raise ParseError(
            f"no Total line in the JVM's GC.class_histogram answer: {out.strip()[:300]!r}"
        )
    entries.sort(key=lambda e: (-e.bytes, e.rank))
    return ClassHistogram(
        pid=pid,
        live=live,
        total_instances=total[0],
        total_bytes=total[1],
        classes=len(entries),
        entries=entries[:top],
    )


# --- CPython's allocator --------------------------------------------------------------

LAYOUT_MARK = "TRACECAR-PYLAYOUT "


def layout(out: str) -> dict[str, Any]:
    """The line ``_gdbscript``'s program prints: where the allocator's state is."""
    for line in out.splitlines():
        if line.startswith(LAYOUT_MARK):
            doc: dict[str, Any] = json.loads(line[len(LAYOUT_MARK) :])
            break
    else:
        raise ParseError("gdb printed no layout")
    if "error" in doc:
        raise ParseError(str(doc["error"]))
    if "arena_object_size" not in doc or not ("globals" in doc or "fields" in doc):
        raise ParseError(f"an incomplete layout: {sorted(doc)}")
    return doc


def pymalloc(doc: dict[str, Any], *, top: int) -> PythonAllocator:
    """What ``_pymalloc.read`` found, as the snapshot answers it."""
    classes = [
        SizeClass(block_bytes=int(size), blocks=int(n), bytes=int(size) * int(n))
        for size, n in doc["blocks_by_size"].items()
        if int(n) > 0
    ]
    classes.sort(key=lambda c: (-c.bytes, c.block_bytes))
    return PythonAllocator(
        python_version=doc.get("version"),
        arenas=int(doc["arenas"]),
        arena_bytes=int(doc["arena_bytes"]),
        arenas_highwater=int(doc["highwater"]),
        arenas_allocated_total=int(doc["allocated_total"]),
        pools=int(doc["pools"]),
        pool_bytes=int(doc["pool_bytes"]),
        blocks_in_use=sum(c.blocks for c in classes),
        bytes_in_use=sum(c.bytes for c in classes),
        held_bytes=int(doc["arenas"]) * int(doc["arena_bytes"]),
        size_classes=classes[:top],
        walked_arenas=int(doc["walked"]),
    )
