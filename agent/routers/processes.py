"""``GET /processes`` and ``GET /processes/{pid}``: the pod's processes, from /proc."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query

from agent import procfs
from agent.openapi import PROTECTED, PidPath, errors
from agent.procfs import ProcessInfo

router = APIRouter(tags=["processes"], responses=errors(*PROTECTED, 422))


@router.get("/processes")
async def list_processes(
    sample_ms: Annotated[
        int,
        Query(ge=0, le=5000, description="CPU sampling window; 0 = average since start"),
    ] = 200,
) -> list[ProcessInfo]:
    """Every process of the pod with its container, runtime, CPU and memory use."""
    if sample_ms == 0:
        return await asyncio.to_thread(procfs.list_processes)
    before = await asyncio.to_thread(procfs.cpu_ticks)
    await asyncio.sleep(sample_ms / 1000)
    return await asyncio.to_thread(
        lambda: procfs.list_processes(before=before, interval_s=sample_ms / 1000)
    )


@router.get("/processes/{pid}", responses=errors(404))
async def get_process(pid: PidPath) -> ProcessInfo:
    """One process (404 if there is none with that pid)."""
    return await asyncio.to_thread(procfs.process_info, pid)
