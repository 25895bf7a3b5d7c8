"""FastAPI dependencies: settings and the per-capability services on ``app.state``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from agent.settings import Settings, get_settings

SettingsDep = Annotated[Settings, Depends(get_settings)]


def state(request: Request, name: str) -> Any:
    return getattr(request.app.state, name)
