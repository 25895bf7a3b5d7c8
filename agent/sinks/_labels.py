"""The labels every profile carries, the same on every sink, and the objects' keys.

Names follow what Pyroscope's and Parca's users already query by: ``service_name``
(``NAMESPACE/WORKLOAD`` unless ``TRACECAR_AGENT_SERVICE_NAME`` says otherwise),
``namespace``, ``pod``, ``container``, ``node``, ``workload``, ``runtime``, the
profile's ``type`` (``cpu``, ``off-cpu``) and its ``source`` (``continuous``,
``on-demand``, ``trigger``; a trigger's profiles add ``trigger_id`` and
``trigger_reason``). Empty values are left out (Pyroscope drops them anyway).

Profile types as Pyroscope names them: ``__name__`` plus the pprof's sample and
period types, so CPU profiles are ``process_cpu:cpu:nanoseconds:cpu:nanoseconds``
(what Pyroscope's own agents send: Grafana shows them without set-up) and
off-CPU profiles ``off_cpu:off_cpu_time:nanoseconds:off_cpu_time:nanoseconds``.
"""

from __future__ import annotations

import re
import socket
from typing import Literal

from agent.settings import Settings

ProfileKind = Literal["cpu", "off-cpu"]
Source = Literal["continuous", "on-demand", "trigger"]
METRIC_NAME: dict[ProfileKind, str] = {"cpu": "process_cpu", "off-cpu": "off_cpu"}
PROFILE_TYPE_ID: dict[ProfileKind, str] = {
    "cpu": "process_cpu:cpu:nanoseconds:cpu:nanoseconds",
    "off-cpu": "off_cpu:off_cpu_time:nanoseconds:off_cpu_time:nanoseconds",
}
MAX_VALUE = 200  # Pyroscope refuses label values over 2048 characters; ours stay short

# A Deployment's pod: NAME-<pod-template-hash>-<5 chars>; a StatefulSet's: NAME-<ordinal>;
# a DaemonSet's or a Job's: NAME-<5 chars>.
_DEPLOYMENT_POD = re.compile(r"^(?P<name>.+)-[a-z0-9]{6,10}-[a-z0-9]{5}$")
_STATEFUL_POD = re.compile(r"^(?P<name>.+)-\d+$")
_OWNED_POD = re.compile(r"^(?P<name>.+)-[a-z0-9]{5}$")


def guess_workload(pod: str) -> str:
    """``kind/name`` of a pod's owner from the pod's name, when nobody said (a guess:
    the webhook sets ``TRACECAR_AGENT_WORKLOAD`` from the owner references)."""
    for pattern, kind in (
        (_DEPLOYMENT_POD, "deployment"),
        (_STATEFUL_POD, "statefulset"),
        (_OWNED_POD, "daemonset"),
    ):
        m = pattern.match(pod)
        if m:
            return f"{kind}/{m.group('name')}"
    return f"pod/{pod}"


def clean(value: object) -> str:
    """A label value: printable, one line, bounded."""
    text = " ".join(str(value).split())
    return text[:MAX_VALUE]


def pod_labels(settings: Settings) -> dict[str, str]:
    """The labels of everything this agent sends (the per-profile ones come on top)."""
    pod = settings.pod_name or socket.gethostname()
    namespace = settings.pod_namespace or "default"
    workload = settings.workload or guess_workload(pod)
    service = settings.service_name or f"{namespace}/{workload.rpartition('/')[2]}"
    labels = {
        "service_name": service,
        "namespace": namespace,
        "pod": pod,
        "workload": workload,
        "node": settings.node_name or "",
    }
    return {k: clean(v) for k, v in labels.items() if v}


def profile_labels(
    base: dict[str, str],
    *,
    kind: ProfileKind,
    source: Source,
    container: str | None = None,
    runtime: str | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    labels = {
        **base,
        "__name__": METRIC_NAME[kind],
        "type": kind,
        "source": source,
        "container": container or "",
        "runtime": runtime or "",
        **(extra or {}),
    }
    return {k: clean(v) for k, v in labels.items() if v}


_KEY_PART = re.compile(r"[^A-Za-z0-9._-]+")


def object_key(prefix: str, base: dict[str, str], *parts: str) -> str:
    """``PREFIX/NAMESPACE/POD/...``: one folder per pod, then the kind and the id."""
    safe = [_KEY_PART.sub("_", p) for p in (base.get("namespace", "default"), base["pod"], *parts)]
    head = prefix.strip("/")
    return "/".join([head, *safe] if head else safe)
