"""Wire formats of ``GET /processes/{pid}/memory`` and its class histogram (pure)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

MappingKind = Literal["heap", "stack", "anon", "file", "shmem", "special"]


class MemoryTotals(BaseModel):
    """The whole process, from /proc/PID/smaps_rollup (bytes)."""

    rss_bytes: int = Field(description="resident: what counts against a memory limit's RSS")
    pss_bytes: int = Field(description="proportional: shared pages divided among their sharers")
    swap_bytes: int
    swap_pss_bytes: int
    anonymous_bytes: int = Field(description="resident anonymous memory: heaps, stacks, arenas")
    file_bytes: int = Field(description="resident file-backed memory (code, mapped files, shmem)")
    pss_anon_bytes: int | None = Field(description="kernel 5.13+; null before")
    pss_file_bytes: int | None
    pss_shmem_bytes: int | None
    private_bytes: int = Field(description="Private_Clean + Private_Dirty: freed if it exits")
    shared_bytes: int = Field(description="Shared_Clean + Shared_Dirty")
    locked_bytes: int


class MemoryMapping(BaseModel):
    """One mapping of /proc/PID/smaps."""

    start: str = Field(description="hex address")
    end: str
    perms: str = Field(description="rwxp, as /proc/PID/maps")
    kind: MappingKind
    path: str = Field(description="the file as the process sees it, [heap], [stack], or ''")
    size_bytes: int
    rss_bytes: int
    pss_bytes: int
    anonymous_bytes: int
    swap_bytes: int


class KindTotal(BaseModel):
    kind: MappingKind
    mappings: int
    size_bytes: int
    rss_bytes: int
    pss_bytes: int
    swap_bytes: int


class JavaHeap(BaseModel):
    """``jcmd GC.heap_info``, read: the first line's figures, and the JVM's own text."""

    collector: str = Field(description="e.g. garbage-first heap, def new generation")
    committed_bytes: int | None = Field(description="the heap's 'total'")
    used_bytes: int | None
    metaspace_used_bytes: int | None
    metaspace_committed_bytes: int | None
    text: str = Field(description="the JVM's answer as it printed it")


class HistogramEntry(BaseModel):
    rank: int
    instances: int
    bytes: int
    class_name: str
    module: str | None = Field(description="e.g. java.base@17.0.15 (JDK 9+)")


class ClassHistogram(BaseModel):
    """``jcmd GC.class_histogram``: classes by the bytes their instances take."""

    pid: int
    live: bool = Field(
        description="true: live objects only (the JVM ran a full GC first); false: every "
        "object in the heap, unreachable ones included (no GC: '-all')"
    )
    total_instances: int
    total_bytes: int
    classes: int = Field(description="classes with instances (entries before the cut)")
    entries: list[HistogramEntry] = Field(description="the top entries, heaviest first")


class SizeClass(BaseModel):
    block_bytes: int
    blocks: int
    bytes: int


class PythonAllocator(BaseModel):
    """CPython's small-object allocator (pymalloc), read from the process's memory."""

    python_version: str | None
    arenas: int = Field(description="arenas currently allocated")
    arena_bytes: int = Field(description="size of one arena")
    arenas_highwater: int
    arenas_allocated_total: int = Field(description="arenas ever allocated")
    pools: int = Field(description="pools carved out of the arenas")
    pool_bytes: int
    blocks_in_use: int = Field(description="objects pymalloc holds (<= 512 bytes each)")
    bytes_in_use: int = Field(description="their bytes, rounded to size classes")
    held_bytes: int = Field(description="arenas x arena size: what pymalloc holds from the OS")
    size_classes: list[SizeClass] = Field(description="the heaviest size classes, by bytes")
    walked_arenas: int = Field(description="arenas walked (a cap bounds the time attached)")


class RuntimeMemory(BaseModel):
    """What the process's runtime says of its memory, when it can say it."""

    runtime: str
    available: bool
    tool: str | None = Field(description="jattach (jcmd), gdb (pymalloc read), or null")
    reason: str | None = Field(default=None, description="why not, when not available")
    java_heap: JavaHeap | None = None
    class_histogram: ClassHistogram | None = None
    python_allocator: PythonAllocator | None = None


class MemorySnapshot(BaseModel):
    """``GET /processes/{pid}/memory``."""

    pid: int
    comm: str
    container: str
    runtime: str
    taken_at: float = Field(description="Unix time")
    totals: MemoryTotals
    mappings: int = Field(description="how many mappings the process has")
    by_kind: list[KindTotal] = Field(description="heap, stack, anon, file, shmem, special")
    largest_mappings: list[MemoryMapping] = Field(description="by RSS, then size")
    runtime_memory: RuntimeMemory | None = Field(
        description="the runtime's own figures (null with runtime=false)"
    )
    notes: list[str] = Field(default_factory=list)
