"""``GET /capabilities``: what works on this node and in each capability, and why not."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from agent import capabilities, variant
from agent.auth import AccessFacts
from agent.capabilities import Check, NodeFacts
from agent.deps import SettingsDep, SinksDep
from agent.openapi import PROTECTED, errors
from agent.registry import Capability
from agent.routers.lttng import ATTACHED_LTTNG
from agent.sinks import SinksStatus

router = APIRouter(tags=["capabilities"], responses=errors(*PROTECTED, 422))
_CHECK = TypeAdapter(Check)


class Mode(BaseModel):
    """How the agent runs: a sidecar of the pod, or attached to one container."""

    mode: Literal["sidecar", "attached"]
    idle_exit_s: float | None = Field(description="attached: it ends itself after this idle")
    reason: str = Field(description="what it sees, in words")


class Capabilities(NodeFacts):
    """``GET /capabilities``: the node's facts, how the agent is reached and run, its
    stores, its image, and each capability the app registered, under its name
    (``profiling``, ``probes``, ``lttng``...: ``additionalProperties``), each with
    ``available`` and ``reason`` and its own facts."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Check] = Field(init=False)
    auth: AccessFacts
    mode: Mode
    sinks: SinksStatus
    image: variant.Image


@router.get("/capabilities")
async def get_capabilities(
    request: Request, settings: SettingsDep, sinks: SinksDep
) -> Capabilities:
    """General facts (tools, permissions, tracefs, BPF, kernel tracing) and each
    capability's (every one the app registered, under its name)."""
    registered: dict[str, Capability] = request.app.state.capabilities

    async def of(svc: Capability) -> Check:
        try:
            return _CHECK.validate_python(await svc.capabilities())
        except Exception as e:  # one broken check must not hide the others
            return {"available": False, "reason": f"capability check failed: {e}"}

    general, per_service = await asyncio.gather(
        capabilities.general(), asyncio.gather(*(of(svc) for svc in registered.values()))
    )
    each = dict(zip(registered, per_service, strict=True))
    if settings.mode == "attached":
        each["lttng"] = {"available": False, "reason": ATTACHED_LTTNG}
    for name, check in general.tools.items():
        why = variant.tool_reason(settings.image_variant, name)
        if why is not None and not check["available"]:
            check["reason"] = why
    mode = Mode(
        mode=settings.mode,
        idle_exit_s=settings.idle_exit_s,
        reason=(
            "attached as an ephemeral container: sees the target container's processes"
            if settings.mode == "attached"
            else "a sidecar: sees every container of the pod (shareProcessNamespace)"
        ),
    )
    return Capabilities.model_validate(
        {
            **general.model_dump(),
            "auth": request.app.state.access.describe(),
            "mode": mode,
            "sinks": sinks.status(),
            "image": variant.describe(settings.image_variant),
            **each,
        }
    )
