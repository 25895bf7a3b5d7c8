"""Targets as kubectl spells them, parsed without touching the cluster.

``NAME`` and ``pod/NAME`` (also ``po/``, ``pods/``) name one pod; ``deploy/NAME`` (also
``deployment/``, ``deployments/``) names a Deployment, resolved to its pods through its
selector; ``-l SELECTOR`` selects pods by label. Names are checked against the
DNS-1123 rules Kubernetes itself applies, so a typo fails here, before any request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from kubectl_tracecar.errors import UsageError

Kind = Literal["pod", "deployment", "selector"]

# DNS-1123 subdomain (pod and Deployment names).
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# Label selectors as kubectl takes them: keys, values, =, ==, !=, in (...), notin, !key.
_SELECTOR = re.compile(r"^[A-Za-z0-9_./=!,()\s-]{1,1024}$")
_KINDS: dict[str, Kind] = {
    "pod": "pod",
    "pods": "pod",
    "po": "pod",
    "deploy": "deployment",
    "deployment": "deployment",
    "deployments": "deployment",
}


@dataclass(frozen=True, slots=True)
class Target:
    kind: Kind
    name: str  # the pod or Deployment name, or the selector itself

    def __str__(self) -> str:
        return f"-l {self.name}" if self.kind == "selector" else f"{self.kind}/{self.name}"


def parse_target(text: str | None, *, selector: str | None) -> Target:
    """``TARGET`` or ``-l SELECTOR`` (exactly one) as a :class:`Target`."""
    if selector is not None and text:
        raise UsageError("give a TARGET or -l SELECTOR, not both")
    if selector is not None:
        if not _SELECTOR.fullmatch(selector) or not selector.strip():
            raise UsageError(
                f"invalid label selector {selector!r}: use key=value, key!=value, "
                "key in (a,b) or a comma-separated list of these"
            )
        return Target("selector", selector.strip())
    if not text:
        raise UsageError("name a target: POD, pod/NAME, deploy/NAME or -l SELECTOR")
    kind_text, slash, name = text.partition("/")
    if not slash:
        kind_text, name = "pod", text
    kind = _KINDS.get(kind_text.lower())
    if kind is None:
        raise UsageError(
            f"unsupported resource type {kind_text!r} in {text!r}: "
            "use POD, pod/NAME or deploy/NAME (or -l SELECTOR)"
        )
    if len(name) > 253 or not _NAME.fullmatch(name):
        raise UsageError(
            f"invalid {kind} name {name!r}: lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit"
        )
    return Target(kind, name)


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str, *, flag: str = "-d") -> float:
    """``30s``, ``2m``, ``1.5h``, ``500ms`` or plain seconds, as seconds."""
    m = _DURATION.fullmatch(text.strip())
    if not m or float(m.group(1)) <= 0:
        raise UsageError(
            f"invalid duration for {flag}: {text!r}: use a positive number with an optional "
            "unit ms, s, m or h (e.g. 30s, 2m)"
        )
    return float(m.group(1)) * _UNIT_S[m.group(2)]
