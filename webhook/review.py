"""The AdmissionReview in and out: validation of the request and the answer, both pure.

Two error channels, on purpose:

- a request that is not a usable AdmissionReview (not JSON, wrong apiVersion/kind,
  no uid...) is the caller's bug: :class:`BadReview`, answered with HTTP 4xx and
  ``{"detail": ...}`` saying what was wrong and what is allowed;
- a well-formed review the webhook does not handle (another resource, another
  operation) or a pod it will not inject is answered ``allowed: true`` without a
  patch, with the reason in ``warnings`` where the user should hear about it.

The webhook always allows: it only adds the agent, it never vetoes a pod.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Final, Literal

import orjson

from webhook._types import (
    ADMISSION_API_VERSION,
    AdmissionRequest,
    AdmissionResponse,
    AdmissionReviewResponse,
    JsonObject,
)
from webhook.decision import LABEL_KEY, LABEL_VALUE, WARN_REASONS, Reason, inject_required
from webhook.inject import plan_injection
from webhook.options import NamespacePolicy
from webhook.settings import Settings
from webhook.tokens import TokenFactory, random_token

Outcome = Reason | Literal["not-a-pod", "not-create", "subresource", "internal-error"]

MAX_DETAIL_VALUE: Final = 60


class BadReview(ValueError):
    """The request is not a usable AdmissionReview; `status_code` is the HTTP answer."""

    def __init__(self, detail: str, *, status_code: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status_code = status_code


@dataclass(frozen=True, kw_only=True)
class Answer:
    """The review to send back plus what the log line and the metrics need."""

    review: AdmissionReviewResponse
    outcome: Outcome
    uid: str
    namespace: str
    pod: str
    warnings: tuple[str, ...] = ()
    patch_ops: int = 0
    extra: dict[str, object] = field(default_factory=dict)


def _shown(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= MAX_DETAIL_VALUE else text[: MAX_DETAIL_VALUE - 3] + "..."


def parse_review(body: bytes) -> AdmissionRequest:
    """The ``request`` of an ``admission.k8s.io/v1`` AdmissionReview, or :class:`BadReview`."""
    try:
        # orjson: strict JSON (no NaN), UTF-8 only, nesting capped; fast on big pods.
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadReview(
            f"the body is not valid JSON ({str(e)[:120]}); send an {ADMISSION_API_VERSION} "
            "AdmissionReview"
        ) from None
    if not isinstance(doc, dict):
        raise BadReview(
            f"the body is a JSON {type(doc).__name__}, not an object; send an "
            f"{ADMISSION_API_VERSION} AdmissionReview"
        )
    if doc.get("apiVersion") != ADMISSION_API_VERSION:
        raise BadReview(
            f"apiVersion {_shown(doc.get('apiVersion'))} is not supported; only "
            f'"{ADMISSION_API_VERSION}" is (admissionReviewVersions: ["v1"])'
        )
    if doc.get("kind") != "AdmissionReview":
        raise BadReview(
            f'kind {_shown(doc.get("kind"))} is not supported; only "AdmissionReview" is'
        )
    request = doc.get("request")
    if not isinstance(request, dict):
        raise BadReview('the AdmissionReview has no "request" object')
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadReview("request.uid is missing or empty; it must be a non-empty string")
    kind = request.get("kind")
    if not isinstance(kind, dict) or not all(
        isinstance(kind.get(k), str) for k in ("group", "version", "kind")
    ):
        raise BadReview('request.kind must be an object {"group", "version", "kind"} of strings')
    if not isinstance(request.get("operation"), str):
        raise BadReview(
            "request.operation is missing; it must be one of CREATE, UPDATE, DELETE, CONNECT"
        )
    for key in ("namespace", "name", "subResource"):
        if key in request and not isinstance(request[key], str | None):
            raise BadReview(f"request.{key} must be a string")
    return request  # type: ignore[return-value]  # checked field by field above


def _review(response: AdmissionResponse) -> AdmissionReviewResponse:
    return {"apiVersion": ADMISSION_API_VERSION, "kind": "AdmissionReview", "response": response}


def _allowed(uid: str, warnings: list[str] | tuple[str, ...] = ()) -> AdmissionResponse:
    response: AdmissionResponse = {"uid": uid, "allowed": True}
    if warnings:
        response["warnings"] = list(warnings)
    return response


def _pod_name(pod: JsonObject, request: AdmissionRequest) -> str:
    metadata = pod.get("metadata")
    if isinstance(metadata, dict):
        if isinstance(metadata.get("name"), str) and metadata["name"]:
            return str(metadata["name"])
        if isinstance(metadata.get("generateName"), str) and metadata["generateName"]:
            return f"{metadata['generateName']}*"  # the API server names it after admission
    return request.get("name") or ""


def answer(
    request: AdmissionRequest,
    *,
    settings: Settings,
    owned: bool = False,
    new_token: TokenFactory = random_token,
    policy: NamespacePolicy = "default",
) -> Answer:
    """The answer to a parsed request. ``owned=True``: the caller hands over the request
    (freshly parsed JSON), so the pod is mutated in place instead of copied. `new_token`
    makes the injected agent's token (see :mod:`webhook.tokens`); `policy` is the
    namespace's, from the path the webhook entry called."""
    uid = request["uid"]
    namespace = request.get("namespace") or ""
    kind = request["kind"]
    pod_name = request.get("name") or ""

    def skipped(outcome: Outcome, warnings: list[str]) -> Answer:
        return Answer(
            review=_review(_allowed(uid, warnings)),
            outcome=outcome,
            uid=uid,
            namespace=namespace,
            pod=pod_name,
            warnings=tuple(warnings),
        )

    if (kind["group"], kind["kind"]) != ("", "Pod"):
        group = f"{kind['group']}/" if kind["group"] else ""
        warning = (
            f"tracecar: {group}{kind['version']} {kind['kind']} ignored; the webhook only "
            "mutates Pods (check the MutatingWebhookConfiguration's rules)"
        )
        return skipped("not-a-pod", [warning])
    if request.get("subResource"):
        warning = (
            f"tracecar: pods/{request.get('subResource')} ignored; only pod creation is mutated"
        )
        return skipped("subresource", [warning])
    if request["operation"] != "CREATE":
        warning = (
            f"tracecar: {_shown(request['operation'])} ignored; only CREATE is mutated "
            "(check the MutatingWebhookConfiguration's rules)"
        )
        return skipped("not-create", [warning])
    pod = request.get("object")
    if not isinstance(pod, dict):
        raise BadReview("request.object must be the Pod being created (a JSON object)")
    pod_name = _pod_name(pod, request)
    if not namespace and isinstance(pod.get("metadata"), dict):
        namespace = str(pod["metadata"].get("namespace") or "")

    decision = inject_required(pod, namespace=namespace, settings=settings)
    if not decision.inject:
        return skipped(
            decision.reason, [decision.message] if decision.reason in WARN_REASONS else []
        )
    injection = plan_injection(
        pod,
        settings=settings,
        copy=not owned,
        new_token=new_token,
        namespace=namespace,
        policy=policy,
    )
    patch = orjson.dumps(injection.ops)
    response = _allowed(uid, injection.warnings)
    response["patchType"] = "JSONPatch"
    response["patch"] = base64.b64encode(patch).decode("ascii")
    return Answer(
        review=_review(response),
        outcome="injected",
        warnings=injection.warnings,
        patch_ops=len(injection.ops),
        extra={
            "port": injection.status["port"],
            "mode": injection.status["mode"],
            "auth": injection.status["auth"],
            "sinks": injection.status["sinks"],
            "continuous": injection.status["continuous"],
        },
        uid=uid,
        namespace=namespace,
        pod=pod_name,
    )


def internal_error(uid: str) -> AdmissionReviewResponse:
    """A bug must never block pods: admit without the agent and say so."""
    return _review(
        _allowed(uid, ["tracecar: internal error, the pod was admitted without the agent"])
    )


def fixed_review(settings: Settings) -> bytes:
    """The benchmark floor's answer: a constant review of the size class of a real one
    (the agent's patch for a one-container pod, computed once): the bytes a review
    writes through TLS and the loopback are the server stack's cost, not the webhook's."""
    pod: JsonObject = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "floor-", "labels": {LABEL_KEY: LABEL_VALUE}},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1.0"}]},
    }
    request: AdmissionRequest = {
        "uid": "00000000-0000-0000-0000-000000000000",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "operation": "CREATE",
        "namespace": "default",
        "object": pod,
    }
    return orjson.dumps(answer(request, settings=settings, owned=True).review)
