"""What the agent's OpenAPI document declares beyond the handlers' own types.

Owns the path parameters routers share (a pid, a job id), the typed error bodies
(what :mod:`agent.errors` and the app's handlers send), :data:`Echo` (a view's copy of
the request model it was made from), :data:`Speedscope` (the one third-party format
answered as JSON), the ``responses=``
declarations the routers attach to their routes (every status a route can answer,
with its model and media types), and the 405 answer:
``Allow`` lists every method the document gives the path (Starlette names only
the methods of the first route that matched it).

``tests/agent/test_openapi_conformance.py`` runs schemathesis against a real
agent to keep this file and the routers honest.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, NotRequired, TypeVar

from fastapi import FastAPI, Path, Request
from fastapi.exception_handlers import http_exception_handler
from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, SerializationInfo
from pydantic_core import core_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from typing_extensions import TypedDict  # pydantic's schemas need it before Python 3.12


class ErrorBody(BaseModel):
    """Every error answer: ``detail`` says what was wrong and what is allowed.

    Some errors add fields of their own (``field``: the request field at fault;
    ``closest``: symbol names near a missing one; ``pids``: the candidates of an
    ambiguous process name; ``tool``: the tool that failed; ``id``/``state``: the
    profile that failed), hence ``additionalProperties``.
    """

    model_config = ConfigDict(extra="allow")
    detail: str = Field(description="What was wrong, and what is allowed")


class ValidationIssue(BaseModel):
    loc: list[str] = Field(description="Where: body, query or path, then the field's path")
    msg: str


class InvalidBody(ErrorBody):
    """422: a request the schema or the agent's own limits refuse.

    From the schema: ``detail`` sums every problem up, ``errors`` lists them one by
    one. From the agent's checks (a value above a configured limit, a function not
    in the binary): ``detail`` and, where one field is at fault, ``field``.
    """

    model_config = ConfigDict(extra="allow")
    field: str | None = Field(default=None, description="The request field at fault")
    errors: list[ValidationIssue] | None = Field(
        default=None, description="Each problem the request schema found"
    )


_WHY: dict[int, str] = {
    400: "A body that is not JSON, or another malformed request",
    401: "Missing or wrong bearer token (when the agent has one)",
    403: "Disabled on this agent by its operator",
    404: "No such process, profile, probe, session, symbol or artifact",
    409: "Not in this state (still running, not yet started, ...), or unavailable here",
    422: "A value out of range or not matching its pattern",
    429: "A configured limit of concurrent work is reached",
    500: "An internal error (a bug): see the agent's log",
    502: "A tool (perf, bpftrace, lttng, babeltrace2) failed; its own message is in detail",
    503: "A tool or capability is not available here (see GET /capabilities)",
    504: "A tool did not finish within its timeout",
}

PidPath = Annotated[int, Path(ge=1, le=4_194_304)]
"""A process id in a route's path (at most the kernel's largest pid_max)."""
JobIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")]
"""A job's id in a route's path (the shape ``agent.jobs.new_id`` makes)."""

M = TypeVar("M", bound=BaseModel)


def _given(value: BaseModel, info: SerializationInfo) -> Any:
    return value.model_dump(mode=info.mode, exclude_none=True)


class _AsGiven:
    """Serialize a request model without its null fields, whatever the enclosing dump
    asks (an ``exclude_unset`` answer must still show the defaults the agent applied);
    no ``return_schema``, so the document keeps the model's own schema."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        ser = core_schema.plain_serializer_function_ser_schema(_given, info_arg=True)
        return {**handler(source), "serialization": ser}


Echo = Annotated[M, _AsGiven()]
"""A view's copy of what was asked: the request model itself (the document names its
fields), answered as given plus the defaults, without the fields left null."""

Responses = dict[int | str, dict[str, Any]]


class SpeedscopeFrame(TypedDict):
    name: str
    file: NotRequired[str]


class SpeedscopeShared(TypedDict):
    frames: list[SpeedscopeFrame]


class SpeedscopeProfile(TypedDict):
    type: Literal["sampled"]
    name: str
    unit: str
    startValue: float
    endValue: float
    samples: list[list[int]]
    """Each sample's stack: indexes into the shared frames, root first."""
    weights: list[float]


Speedscope = TypedDict(
    "Speedscope",
    {
        "$schema": str,
        "exporter": str,
        "name": str,
        "activeProfileIndex": int,
        "shared": SpeedscopeShared,
        "profiles": list[SpeedscopeProfile],
        "tracecar": NotRequired[dict[str, Any]],
    },
)
"""A speedscope file as the agent writes it (``tracecar_formats.speedscope``; the
format: https://www.speedscope.app/file-format-schema.json). ``tracecar``: what the
agent adds for scripts (the flight recorder's RSS trends); speedscope ignores it."""

PROTECTED = (401, 500)
"""What any route behind the token can answer (router-level ``responses=``)."""
TOOLS = (502, 503, 504)
"""What a route that runs a tool can answer besides its own errors."""


def errors(*codes: int) -> Responses:
    """``responses=`` entries for these statuses, each with its error model."""
    return {
        c: {"model": InvalidBody if c == 422 else ErrorBody, "description": _WHY[c]} for c in codes
    }


def content(
    description: str, *media_types: str, binary: bool = False, model: Any = None
) -> dict[str, Any]:
    """One status's entry answering any of ``media_types`` (a file, a stream); the JSON
    one (``application/json`` among them) answers ``model`` (FastAPI fills its schema)."""
    text: dict[str, Any] = {"type": "string", "format": "binary"} if binary else {"type": "string"}
    entry: dict[str, Any] = {
        "description": description,
        "content": {m: {"schema": {} if m == "application/json" else text} for m in media_types},
    }
    if "application/json" in media_types:
        if model is None:
            raise TypeError("a JSON answer names its model")
        entry["model"] = model
    return entry


def install(app: FastAPI) -> None:
    """Answer 405 with an ``Allow`` naming every method the document gives the path."""
    paths: list[tuple[re.Pattern[str], str]] = []

    def allowed(path: str) -> str:
        if not paths:  # the document is built once, on first use, like /openapi.json
            for template, item in app.openapi()["paths"].items():
                parts = template.split("/")
                regex = "/".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
                paths.append((re.compile(regex), ", ".join(m.upper() for m in item)))
        return next((methods for regex, methods in paths if regex.fullmatch(path)), "")

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 405:
            headers = {"Allow": allowed(request.url.path)}
            exc = StarletteHTTPException(405, exc.detail, headers=headers)
        return await http_exception_handler(request, exc)

    app.add_exception_handler(StarletteHTTPException, method_not_allowed)
