"""``GET /capabilities``: what works on this node and in each capability, and why not."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from agent import capabilities
from agent.deps import SettingsDep, SinksDep
from agent.openapi import PROTECTED, errors
from agent.registry import Capability
from agent.routers.lttng import ATTACHED_LTTNG

router = APIRouter(tags=["capabilities"], responses=errors(*PROTECTED, 422))


@router.get("/capabilities")
async def get_capabilities(
    request: Request, settings: SettingsDep, sinks: SinksDep
) -> dict[str, object]:
    """General facts (tools, permissions, tracefs, BPF, kernel tracing) and each
    capability's (every one the app registered, under its name)."""
    registered: dict[str, Capability] = request.app.state.capabilities

    async def of(svc: Capability) -> dict[str, object]:
        try:
            return await svc.capabilities()
        except Exception as e:  # one broken check must not hide the others
            return {"available": False, "reason": f"capability check failed: {e}"}

    general, *per_service = await asyncio.gather(
        capabilities.general(), *(of(svc) for svc in registered.values())
    )
    access = request.app.state.access.describe()
    out = {"auth": access, **general, **dict(zip(registered, per_service, strict=True))}
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
