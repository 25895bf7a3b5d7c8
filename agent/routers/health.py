"""``GET /healthz``: liveness, never authenticated (probes have no token)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from agent import __version__
from agent.jobs import Later, later

router = APIRouter(tags=["health"])


class Health(BaseModel):
    """Alive. ``starting`` (no version yet): the boot's answer while the app loads
    (:mod:`agent.boot`)."""

    status: Literal["ok", "starting"] = Field(description="starting: the app is loading")
    version: Later[str] = later("the agent's version, once the app serves")


@router.get("/healthz")
async def healthz() -> Health:
    return Health(status="ok", version=__version__)
