"""FastAPI dependencies: what a review needs from the app (settings, metrics), in one.

:func:`webhook.app.create_app` puts the settings (``get_settings()`` unless given)
and the metrics on ``app.state``. Measured reasons for the shape: FastAPI
re-inspects an override's signature on every request (so no
``dependency_overrides``), runs ``def`` dependencies in a thread pool (a thread hop
per request and a malloc arena per thread; so ``async def``), and each dependency
costs tens of microseconds to solve (so one, not two): together they had doubled a
review's cost. The hot path, ``POST /mutate``, goes one step further and calls
:func:`context_of` itself: solving even this one dependency cost 15 us per review
in-process (a quarter of the review's own work, measured with the benchmark's pod).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from webhook.metrics import Metrics
from webhook.settings import Settings
from webhook.tokens import TokenFactory, random_token


@dataclass(frozen=True, slots=True)
class AppContext:
    settings: Settings
    metrics: Metrics
    floor_review: bytes | None = None
    """The benchmark floor's fixed answer (only with ``settings.bench_floor``)."""
    new_token: TokenFactory = random_token
    """Makes each injected agent's token; tests pass a deterministic one."""


def context_of(request: Request) -> AppContext:
    """The app's context, for handlers on the hot path (no dependency to solve)."""
    context: AppContext = request.app.state.context
    return context


async def get_context(request: Request) -> AppContext:
    return context_of(request)


ContextDep = Annotated[AppContext, Depends(get_context)]
