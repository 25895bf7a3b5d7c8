"""The FastAPI application: routers, the body-size limit, metrics, JSON errors."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from webhook import __version__
from webhook.deps import AppContext
from webhook.limits import BodyLimit
from webhook.logs import get_logger
from webhook.metrics import Metrics
from webhook.review import fixed_review
from webhook.routers import admission, health, metrics
from webhook.settings import Settings, get_settings
from webhook.tokens import TokenFactory, random_token


def create_app(
    settings: Settings | None = None, *, new_token: TokenFactory = random_token
) -> FastAPI:
    """The app, with `settings` or else :func:`get_settings` (read once, cached);
    `new_token` makes the injected agents' tokens (tests: a deterministic one)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="tracecar admission webhook",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.context = AppContext(
        settings=settings,
        metrics=Metrics(),
        floor_review=fixed_review(settings) if settings.bench_floor else None,
        new_token=new_token,
    )
    app.include_router(admission.router)
    if settings.bench_floor:
        # Right after /mutate, so both pay the same route matching.
        app.include_router(admission.floor_router)
    app.include_router(health.router)
    app.include_router(metrics.router)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        get_logger().exception("unexpected error", extra={"fields": {"path": request.url.path}})
        app.state.context.metrics.errors.labels("internal").inc()
        return JSONResponse({"detail": "internal error (logged)"}, status_code=500)

    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        on_reject=lambda: app.state.context.metrics.errors.labels("too_large").inc(),
    )
    return app
