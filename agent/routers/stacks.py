"""``GET /processes/{pid}/stack``: every thread's stack of one process, now (thin over
agent.stacks). JSON by default; ``format=text`` (or ``Accept: text/plain``) answers
the tool's own text: py-spy's dump, the JVM's thread dump, gdb's backtraces."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response

from agent.deps import capability
from agent.openapi import PROTECTED, TOOLS, PidPath, errors
from agent.stacks import Format, RequestedRuntime, Stacks, StackSnapshot

router = APIRouter(tags=["processes"], responses=errors(*PROTECTED, 422))

_TEXT = "text/plain; charset=utf-8"


StacksDep = Annotated[Stacks, Depends(capability("stacks", Stacks))]

_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "model": StackSnapshot,
        "description": "JSON: threads and frames, innermost frame first; text: as the tool "
        "printed it (py-spy dump, the JVM's thread dump, gdb's `thread apply all bt`)",
        "content": {_TEXT: {"schema": {"type": "string"}}},
    }
}


def _wants_text(format: Format | None, accept: str) -> bool:
    if format is not None:
        return format == "text"
    return "text/plain" in accept and "application/json" not in accept


@router.get(
    "/processes/{pid}/stack",
    response_model=StackSnapshot,
    responses={**_OK, **errors(404, 409, *TOOLS)},
)
async def stack(
    stacks: StacksDep,
    pid: PidPath,
    format: Annotated[
        Format | None,
        Query(description="json (default) or text; without it, Accept: text/plain means text"),
    ] = None,
    runtime: Annotated[
        RequestedRuntime,
        Query(
            description="auto: Python frames for Python, Java methods for Java, native frames "
            "otherwise; python/java: 409 unless it is one; native: gdb on any process"
        ),
    ] = "auto",
    native: Annotated[
        bool, Query(description="Python: C frames mixed in (py-spy --native)")
    ] = False,
    accept: Annotated[str, Header()] = "application/json",
) -> Any:
    """One snapshot of every thread's current stack: what is the process doing right now?"""
    text = _wants_text(format, accept)
    snap = await stacks.snapshot(pid, runtime=runtime, native=native, text=text)
    if isinstance(snap, str):
        return Response(snap, media_type=_TEXT)
    return snap
