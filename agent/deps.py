"""FastAPI dependencies: settings and the per-capability services on ``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from agent.settings import Settings, get_settings
from agent.sinks import Sinks

SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_sinks(request: Request) -> Sinks:
    sinks: Sinks = request.app.state.sinks
    return sinks


SinksDep = Annotated[Sinks, Depends(get_sinks)]
