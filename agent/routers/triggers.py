"""``/triggers``: record a profile when CPU use stays high (thin over agent.profiling)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Response
from fastapi.responses import JSONResponse

from agent import profiling
from agent.deps import SinksDep, capability
from agent.openapi import PROTECTED, errors
from agent.routers.profiles import ServiceDep
from agent.sinks import Push

router = APIRouter(tags=["triggers"], responses=errors(*PROTECTED, 422))

TriggerId = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$", description="a trigger's id")]


TriggersDep = Annotated[profiling.Triggers, Depends(capability("triggers", profiling.Triggers))]


class TriggerBody(profiling.TriggerRequest, Push):
    """The body of ``POST /triggers``: when to profile what, and ``push``."""


@router.post(
    "/triggers",
    status_code=201,
    response_model=profiling.TriggerView,
    responses={
        201: {"description": "Armed: the trigger (poll its Location)"},
        **errors(400, 404, 409, 429),
    },
)
async def create_trigger(
    triggers: TriggersDep,
    svc: ServiceDep,
    sinks: SinksDep,
    body: Annotated[TriggerBody, Body()],
) -> JSONResponse:
    """When the target's CPU use stays at or above ``cpu_percent`` for ``for_s``, profile it.
    ``"push": true``: each capture goes to the profile store too (``source=trigger``, with
    ``trigger_id`` and ``trigger_reason``)."""
    if body.push:
        sinks.require_profile_sink()
    trigger = await triggers.create(body)
    if body.push:
        sinks.follow_trigger(triggers, svc, trigger)
    return JSONResponse(
        trigger.view().model_dump(mode="json"),
        status_code=201,
        headers={"Location": f"/triggers/{trigger.id}"},
    )


@router.get("/triggers")
async def list_triggers(triggers: TriggersDep) -> list[profiling.TriggerView]:
    return [t.view() for t in triggers.list()]


@router.get("/triggers/{trigger_id}", responses=errors(404))
async def get_trigger(triggers: TriggersDep, trigger_id: TriggerId) -> profiling.TriggerView:
    """State, the last CPU use measured, and ``captures``: what fired, when, at what CPU."""
    return triggers.get(trigger_id).view()


@router.delete(
    "/triggers/{trigger_id}",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "Stopped and removed; its profiles are kept"}, **errors(404)},
)
async def delete_trigger(triggers: TriggersDep, trigger_id: TriggerId) -> Response:
    await triggers.delete(trigger_id)
    return Response(status_code=204)
