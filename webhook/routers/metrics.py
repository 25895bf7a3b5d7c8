"""``GET /metrics``: Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from webhook.deps import ContextDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_model=None)
async def metrics(context: ContextDep) -> Response:
    return Response(generate_latest(context.metrics.registry), media_type=CONTENT_TYPE_LATEST)
