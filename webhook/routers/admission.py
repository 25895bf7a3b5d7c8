"""``POST /mutate``: AdmissionReview in, AdmissionReview out (and the benchmark floor)."""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from webhook.deps import context_of
from webhook.logs import get_logger, log_review
from webhook.options import NAMESPACE_POLICIES, NamespacePolicy
from webhook.review import BadReview, answer, internal_error, parse_review

router = APIRouter(tags=["admission"])
log = get_logger()

_JSON = "application/json"


@router.post("/mutate", response_model=None)
async def mutate(request: Request) -> Response:
    return await _mutate(request, "default")


@router.post("/mutate/{policy}", response_model=None)
async def mutate_with_policy(request: Request, policy: str) -> Response:
    """The namespace's policy comes in the path: one MutatingWebhookConfiguration entry
    per namespace label (deploy/base/mutatingwebhook.yaml), as the webhook has no API
    access to read namespaces."""
    if policy not in NAMESPACE_POLICIES or policy == "default":
        context_of(request).metrics.errors.labels("bad_request").inc()
        return JSONResponse(
            {
                "detail": f"no namespace policy {policy[:40]!r}; the paths are /mutate, "
                "/mutate/continuous and /mutate/no-push"
            },
            status_code=404,
        )
    return await _mutate(request, "continuous" if policy == "continuous" else "no-push")


async def _mutate(request: Request, policy: NamespacePolicy) -> Response:
    start = time.perf_counter()
    context = context_of(request)  # not a dependency: see webhook.deps
    settings, metrics = context.settings, context.metrics
    content_type = request.headers.get("content-type", _JSON)
    if "json" not in content_type:
        metrics.errors.labels("bad_request").inc()
        return JSONResponse(
            {
                "detail": f"content-type {content_type[:60]!r} is not supported; "
                "send application/json"
            },
            status_code=415,
        )
    body = await request.body()
    uid = ""
    try:
        review = parse_review(body)
        uid = review["uid"]
        # The request was parsed from this body alone, so the pod can be mutated in place.
        result = answer(
            review, settings=settings, owned=True, new_token=context.new_token, policy=policy
        )
    except BadReview as e:
        metrics.errors.labels("bad_request").inc()
        log.info("bad review", extra={"fields": {"status": e.status_code, "detail": e.detail}})
        return JSONResponse({"detail": e.detail}, status_code=e.status_code)
    except Exception:
        # A bug must never block pod creation (nor 500): admit without the agent.
        metrics.errors.labels("internal").inc()
        metrics.record(outcome="internal-error", seconds=time.perf_counter() - start)
        log.exception("review failed", extra={"fields": {"uid": uid, "decision": "internal-error"}})
        return Response(orjson.dumps(internal_error(uid)), media_type=_JSON)
    payload = orjson.dumps(result.review)
    seconds = time.perf_counter() - start
    metrics.record(outcome=result.outcome, seconds=seconds)
    log_review(
        {
            "uid": result.uid,
            "namespace": result.namespace,
            "pod": result.pod,
            "decision": result.outcome,
            "patch_ops": result.patch_ops,
            "warnings": list(result.warnings),
            "ms": round(seconds * 1000, 3),
            **result.extra,
        }
    )
    return Response(payload, media_type=_JSON)


floor_router = APIRouter(tags=["benchmark"])


@floor_router.post("/floor", include_in_schema=False)
async def floor(request: Request) -> Response:
    """The benchmark's baseline: same stack and context lookup, body read, a fixed answer
    of a real review's size (only with ``settings.bench_floor``)."""
    fixed = context_of(request).floor_review
    await request.body()
    return Response(fixed, media_type=_JSON)
