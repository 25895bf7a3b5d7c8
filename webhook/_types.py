"""Wire types: the ``admission.k8s.io/v1`` AdmissionReview and the JSON aliases for pods.

Pods are handled as plain JSON objects (``dict[str, Any]``) on purpose: the webhook
must pass through every field it does not know (newer Kubernetes versions add them)
and the patch is computed on that very JSON, so a typed model would only lose data.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

Json = Any
"""Any JSON value."""
JsonObject = dict[str, Any]
"""A JSON object: a pod, a container, a volume..."""

ADMISSION_API_VERSION: Literal["admission.k8s.io/v1"] = "admission.k8s.io/v1"

Operation = Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]


class GroupVersionKind(TypedDict):
    group: str
    version: str
    kind: str


class GroupVersionResource(TypedDict):
    group: str
    version: str
    resource: str


class AdmissionRequest(TypedDict):
    """The part of ``request`` the webhook reads (the API server sends more)."""

    uid: str
    kind: GroupVersionKind
    resource: NotRequired[GroupVersionResource]
    subResource: NotRequired[str]
    name: NotRequired[str]
    namespace: NotRequired[str]
    operation: Operation
    object: NotRequired[JsonObject | None]
    dryRun: NotRequired[bool]


class AdmissionReviewRequest(TypedDict):
    apiVersion: Literal["admission.k8s.io/v1"]
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest


class Status(TypedDict, total=False):
    code: int
    message: str


class AdmissionResponse(TypedDict):
    uid: str
    allowed: bool
    patchType: NotRequired[Literal["JSONPatch"]]
    patch: NotRequired[str]
    """base64 of the RFC 6902 JSON patch."""
    warnings: NotRequired[list[str]]
    status: NotRequired[Status]


class AdmissionReviewResponse(TypedDict):
    apiVersion: Literal["admission.k8s.io/v1"]
    kind: Literal["AdmissionReview"]
    response: AdmissionResponse


PatchOpName = Literal["add", "replace"]


class PatchOp(TypedDict):
    """One RFC 6902 operation; the webhook only ever adds or replaces."""

    op: PatchOpName
    path: str
    value: Json
