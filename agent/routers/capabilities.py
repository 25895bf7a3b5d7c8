"""``GET /capabilities``: what works on this node and in each capability, and why not."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from agent import capabilities
from agent.deps import SettingsDep, SinksDep
from agent.openapi import PROTECTED, errors
from agent.routers.lttng import ATTACHED_LTTNG

router = APIRouter(tags=["capabilities"], responses=errors(*PROTECTED, 422))

_SERVICES = ("profiling", "recorder", "probes", "lttng", "stacks", "dotnet", "memory")


@router.get("/capabilities")
async def get_capabilities(
    request: Request, settings: SettingsDep, sinks: SinksDep
) -> dict[str, object]:
    """General facts (tools, permissions, tracefs, BPF, kernel tracing) and each service's."""

    async def of(name: str) -> dict[str, object]:
        svc = getattr(request.app.state, name, None)
        if svc is None:
            return {"available": False, "reason": "service not started"}
        try:
            result: dict[str, object] = await svc.capabilities()
        except Exception as e:  # one broken check must not hide the others
            return {"available": False, "reason": f"capability check failed: {e}"}
        return result

    general, *per_service = await asyncio.gather(
        capabilities.general(), *(of(n) for n in _SERVICES)
    )
    access = request.app.state.access.describe()
    out = {"auth": access, **general, **dict(zip(_SERVICES, per_service, strict=True))}
    out["mode"] = {
        "mode": settings.mode,
        "idle_exit_s": settings.idle_exit_s,
        "reason": (
            "attached as an ephemeral container: sees the target container's processes"
            if settings.mode == "attached"
            else "a sidecar: sees every container of the pod (shareProcessNamespace)"
        ),
    }
    out["sinks"] = sinks.status()
    if settings.mode == "attached":
        out["lttng"] = {"available": False, "reason": ATTACHED_LTTNG}
    return out
