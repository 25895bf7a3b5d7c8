"""FastAPI dependencies: settings and the per-capability services on ``app.state``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request

from agent.settings import Settings, get_settings
from agent.sinks import Sinks

T = TypeVar("T")

SettingsDep = Annotated[Settings, Depends(get_settings)]


def capability(name: str, kind: type[T]) -> Callable[[Request], T]:
    """A dependency giving the capability ``name`` (its ``app.state`` attribute, as
    registered in :data:`agent.app.CAPABILITIES`) as its own type. One per router:
    ``ServiceDep = Annotated[Service, Depends(capability("probes", Service))]``."""

    def get(request: Request) -> T:
        svc = getattr(request.app.state, name)
        if not isinstance(svc, kind):  # a registration and a router that disagree
            raise TypeError(f"app.state.{name} is a {type(svc).__name__}, not {kind.__name__}")
        return svc

    get.__name__ = f"get_{name}"
    return get


def get_sinks(request: Request) -> Sinks:
    sinks: Sinks = request.app.state.sinks
    return sinks


SinksDep = Annotated[Sinks, Depends(get_sinks)]
