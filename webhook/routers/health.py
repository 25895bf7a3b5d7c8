"""``GET /healthz`` (the process answers) and ``GET /readyz`` (it can serve reviews)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz() -> dict[str, str]:
    # Nothing to warm up: once the socket is served over TLS, reviews can be answered.
    return {"status": "ready"}
