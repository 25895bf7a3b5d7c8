"""``GET /processes/{pid}/memory`` and its class histogram (thin over agent.memory)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from agent import memory
from agent.deps import capability
from agent.openapi import PROTECTED, TOOLS, PidPath, errors

router = APIRouter(tags=["memory"], responses=errors(*PROTECTED, 422))


ServiceDep = Annotated[memory.Service, Depends(capability("memory", memory.Service))]


@router.get("/processes/{pid}/memory", responses=errors(404, 409))
async def process_memory(
    svc: ServiceDep,
    pid: PidPath,
    top: Annotated[
        int, Query(ge=1, le=memory.MAX_TOP, description="the largest mappings listed")
    ] = 10,
    runtime: Annotated[
        bool,
        Query(
            description="ask the runtime too: a JVM through jattach (GC.heap_info, "
            "GC.class_histogram -all: a heap walk, no GC), CPython's allocator read "
            "live from /proc/PID/mem (never stopped; gdb reads libpython's debug info "
            "once per binary); false: /proc only"
        ),
    ] = True,
    histogram_top: Annotated[
        int, Query(ge=1, le=memory.MAX_TOP, description="JVM: class histogram entries")
    ] = 10,
) -> memory.MemorySnapshot:
    """RSS, PSS, swap, anonymous vs file-backed, the largest mappings, and what the
    runtime says (``runtime_memory``; ``available: false`` with the reason otherwise)."""
    return await svc.snapshot(pid, top=top, runtime=runtime, histogram_top=histogram_top)


@router.get("/processes/{pid}/memory/class-histogram", responses=errors(404, 409, *TOOLS))
async def class_histogram(
    svc: ServiceDep,
    pid: PidPath,
    top: Annotated[int, Query(ge=1, le=memory.MAX_TOP, description="entries, by bytes")] = 50,
    live: Annotated[
        bool,
        Query(
            description="live objects only: the JVM runs a full GC first (a pause); "
            "false (default): every object in the heap, no GC"
        ),
    ] = False,
) -> memory.ClassHistogram:
    """A JVM's classes by the bytes their instances take (``jcmd GC.class_histogram``)."""
    return await svc.class_histogram(pid, top=top, live=live)
