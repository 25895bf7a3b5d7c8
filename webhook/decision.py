"""Whether a pod gets the agent: a pure decision with a machine-readable reason.

The MutatingWebhookConfiguration's objectSelector already filters on the label;
the server checks again because selectors get edited, and because the same pod can
come back (``reinvocationPolicy: IfNeeded``) after the agent was added.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from tracecar_contract import AGENT_NAME
from webhook._types import JsonObject
from webhook.options import STATUS_ANNOTATION
from webhook.settings import Settings

LABEL_KEY: Final = "profiling"
LABEL_VALUE: Final = "enabled"
AGENT_CONTAINER: Final = AGENT_NAME
MIRROR_ANNOTATION: Final = "kubernetes.io/config.mirror"

Reason = Literal[
    "injected",
    "not-labelled",
    "already-injected",
    "host-network",
    "mirror-pod",
    "own-namespace",
    "no-containers",
]

# Skips the user should hear about (the response's warnings); the others are routine.
WARN_REASONS: Final[frozenset[Reason]] = frozenset(
    {"host-network", "mirror-pod", "own-namespace", "no-containers"}
)


@dataclass(frozen=True, kw_only=True)
class Decision:
    inject: bool
    reason: Reason
    message: str


# The decisions that do not depend on the pod, built once (the hot path's answers).
_NOT_LABELLED: Final = Decision(
    inject=False, reason="not-labelled", message=f"pod lacks the label {LABEL_KEY}={LABEL_VALUE}"
)
_ALREADY_INJECTED: Final = Decision(
    inject=False, reason="already-injected", message="the tracecar agent is already there"
)
_INJECT: Final = Decision(inject=True, reason="injected", message="labelled profiling=enabled")


def _dict(value: object) -> JsonObject:
    return value if isinstance(value, dict) else {}


def _containers(spec: JsonObject) -> list[JsonObject]:
    out: list[JsonObject] = []
    for key in ("containers", "initContainers", "ephemeralContainers"):
        items = spec.get(key)
        if isinstance(items, list):
            out.extend(c for c in items if isinstance(c, dict))
    return out


def inject_required(pod: JsonObject, *, namespace: str, settings: Settings) -> Decision:
    """Decide for `pod` created in `namespace` (the request's, pods of workloads have none)."""
    metadata = _dict(pod.get("metadata"))
    labels = _dict(metadata.get("labels"))
    annotations = _dict(metadata.get("annotations"))
    spec = _dict(pod.get("spec"))

    if labels.get(LABEL_KEY) != LABEL_VALUE:
        return _NOT_LABELLED
    if STATUS_ANNOTATION in annotations or any(
        c.get("name") == AGENT_CONTAINER for c in _containers(spec)
    ):
        return _ALREADY_INJECTED
    if namespace == settings.namespace:
        return Decision(
            inject=False,
            reason="own-namespace",
            message=f"tracecar: not injected: pods in the webhook's own namespace {namespace} "
            "are never injected",
        )
    if MIRROR_ANNOTATION in annotations:
        return Decision(
            inject=False,
            reason="mirror-pod",
            message="tracecar: not injected: static (mirror) pods cannot be changed "
            "through the API server",
        )
    if spec.get("hostNetwork") is True:
        return Decision(
            inject=False,
            reason="host-network",
            message="tracecar: not injected: the pod uses the host network, where the agent's "
            "loopback port would be shared by the whole node",
        )
    if not isinstance(spec.get("containers"), list) or not spec["containers"]:
        return Decision(
            inject=False,
            reason="no-containers",
            message="tracecar: not injected: the pod has no spec.containers",
        )
    return _INJECT
