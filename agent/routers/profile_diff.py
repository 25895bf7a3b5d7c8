"""``/profiles/diff``: differential flame graphs of two profiles (thin over agent.profiling).

Its own router, included before ``/profiles``: ``/profiles/{job_id}`` would
otherwise take ``diff`` for an id.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from starlette.exceptions import HTTPException

from agent import profiling
from agent.openapi import PROTECTED, content, errors
from agent.profiling import KIND
from agent.routers.profiles import ServiceDep

router = APIRouter(tags=["profiles"], responses=errors(*PROTECTED, 422))

ProfileId = Annotated[str, Query(pattern=r"^[0-9a-f]{12}$", description="a profile's id")]
_MEDIA = {"svg": "image/svg+xml", "folded": "text/plain; charset=utf-8"}


@router.get(
    "/profiles/diff",
    response_class=Response,
    responses={
        200: content(
            "folded: `stack base_count target_count` lines (difffolded.pl's); "
            "svg: the differential flame graph",
            _MEDIA["folded"],
            _MEDIA["svg"],
        ),
        **errors(404, 409),
    },
)
async def diff_profiles(
    svc: ServiceDep,
    base: ProfileId,
    target: ProfileId,
    format: Annotated[profiling.DiffFormat, Query(description="folded or svg")] = "svg",
    normalize: Annotated[
        bool, Query(description="scale the base to the target's total (difffolded.pl -n)")
    ] = True,
    strip_hex: Annotated[
        bool, Query(description="merge stacks differing only in 0x... addresses (-s)")
    ] = False,
    widths: Annotated[
        profiling.Widths, Query(description="svg: frame widths from the target or the base")
    ] = "target",
) -> Response:
    """What grew (red) and what shrank (blue) from profile ``base`` to profile ``target``."""
    options = profiling.DiffOptions(
        format=format, normalize=normalize, strip_hex=strip_hex, widths=widths
    )
    body = await profiling.differential(
        svc, svc.jobs.get(KIND, base), svc.jobs.get(KIND, target), options
    )
    return Response(body, media_type=_MEDIA[format])


@router.api_route(
    "/profiles/diff", methods=["POST", "PUT", "PATCH", "DELETE"], include_in_schema=False
)
async def diff_other_methods() -> Response:
    """405 (with the document's ``Allow``), not ``DELETE /profiles/{id}``'s 422 for "diff"."""
    raise HTTPException(405, "Method Not Allowed")
