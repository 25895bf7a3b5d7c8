"""``GET /metrics``: the agent's Prometheus metrics (text format 0.0.4), behind its token."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from agent.auth import TokenDep
from agent.metrics import Metrics
from agent.openapi import PROTECTED, errors

router = APIRouter(tags=["metrics"], responses=errors(*PROTECTED, 422))


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Every series of the agent (see docs/agent.md, Metrics)",
            "content": {CONTENT_TYPE_PLAIN_0_0_4: {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(request: Request, _auth: TokenDep) -> Response:
    registry = request.app.state.metrics
    assert isinstance(registry, Metrics)
    dotnet = getattr(request.app.state, "dotnet", None)
    if dotnet is not None:
        dotnet.export_counters()  # .NET counters from the first scrape on (not before)
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)
