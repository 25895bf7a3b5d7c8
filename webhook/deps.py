"""FastAPI dependencies: what a review needs from the app (settings, metrics), in one.

:func:`webhook.app.create_app` puts the settings (``get_settings()`` unless given)
and the metrics on ``app.state``. Measured reasons for the shape: FastAPI
re-inspects an override's signature on every request (so no
``dependency_overrides``), runs ``def`` dependencies in a thread pool (a thread hop
per request and a malloc arena per thread; so ``async def``), and each dependency
costs tens of microseconds to solve (so one, not two): together they had doubled a
review's cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from webhook.metrics import Metrics
from webhook.settings import Settings


@dataclass(frozen=True, slots=True)
class AppContext:
    settings: Settings
    metrics: Metrics


async def get_context(request: Request) -> AppContext:
    context: AppContext = request.app.state.context
    return context


ContextDep = Annotated[AppContext, Depends(get_context)]
