"""What the injected agent is told about the stores and about itself: pure rendering.

Owns the sink settings the webhook hands each agent (``TRACECAR_AGENT_PYROSCOPE_*``,
``..._S3_*``, ``..._CONTINUOUS*``, the ``AWS_*`` credentials by reference), the Secret
volume the store credentials are read from, and the labels every profile carries
(``node`` through the downward API, ``workload`` from the pod's controller,
``service_name`` defaulting to namespace/workload). The agent reads them as plain
settings (agent/settings.py); docs/stores.md lists them.

Credentials never appear in the pod spec: the AWS keys are ``secretKeyRef``s and the
Pyroscope ones are files of a mounted Secret, both ``optional`` so a namespace without
the Secret still runs its pods (the agent then reports the sink as failing, saying why).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from webhook._types import JsonObject
from webhook.options import Options
from webhook.settings import Settings

# Key names and a mount path, not secrets (hence the noqa on them).
SECRET_DIR: Final = "/var/run/secrets/tracecar/sinks"  # noqa: S105
"""Where the sinks Secret is mounted in the agent (read-only, mode 0400)."""
PYROSCOPE_USER_KEY: Final = "pyroscope-username"
PYROSCOPE_PASSWORD_KEY: Final = "pyroscope-password"  # noqa: S105
PYROSCOPE_TOKEN_KEY: Final = "pyroscope-token"  # noqa: S105
AWS_ACCESS_KEY_KEY: Final = "aws-access-key-id"
AWS_SECRET_KEY_KEY: Final = "aws-secret-access-key"  # noqa: S105
SECRET_MODE: Final = 0o400

# A ReplicaSet made by a Deployment is named <deployment>-<pod-template-hash>.
_TEMPLATE_HASH_LABEL: Final = "pod-template-hash"
_GENERATED_SUFFIX = re.compile(r"-+$")
# A pod with neither controller nor name (a template sent by hand): the labels that
# name applications, in the order Kubernetes' recommended labels rank them.
_NAME_LABELS: Final = ("app.kubernetes.io/name", "app", "k8s-app")


@dataclass(frozen=True, kw_only=True)
class Workload:
    kind: str
    """Deployment, StatefulSet, DaemonSet, Job, ReplicaSet, Pod, or the owner's kind."""
    name: str


def _dict(value: object) -> JsonObject:
    return value if isinstance(value, dict) else {}


def workload_of(pod: JsonObject) -> Workload:
    """The workload a pod belongs to, from its controller reference: a Deployment's pods
    are owned by a ReplicaSet named after the Deployment plus the pod-template-hash
    label's value. A pod without a controller is its own workload (its name, its
    generateName without the trailing dash, else its app label)."""
    metadata = _dict(pod.get("metadata"))
    refs = metadata.get("ownerReferences")
    owners = [r for r in refs if isinstance(r, dict)] if isinstance(refs, list) else []
    controller = next((r for r in owners if r.get("controller") is True), None)
    if controller is None and len(owners) == 1:
        controller = owners[0]
    if controller is not None and isinstance(controller.get("name"), str) and controller["name"]:
        kind = str(controller.get("kind") or "Unknown")
        name: str = controller["name"]
        template_hash = _dict(metadata.get("labels")).get(_TEMPLATE_HASH_LABEL)
        if (
            kind == "ReplicaSet"
            and isinstance(template_hash, str)
            and template_hash
            and name.endswith("-" + template_hash)
        ):
            return Workload(kind="Deployment", name=name[: -len(template_hash) - 1])
        return Workload(kind=kind, name=name)
    own = metadata.get("name")
    if isinstance(own, str) and own:
        return Workload(kind="Pod", name=own)
    generated = metadata.get("generateName")
    if isinstance(generated, str) and _GENERATED_SUFFIX.sub("", generated):
        return Workload(kind="Pod", name=_GENERATED_SUFFIX.sub("", generated))
    labels = _dict(metadata.get("labels"))
    for key in _NAME_LABELS:
        value = labels.get(key)
        if isinstance(value, str) and value:
            return Workload(kind="Pod", name=value)
    return Workload(kind="Pod", name="unknown")


def default_service_name(*, namespace: str, workload: Workload) -> str:
    """``namespace/workload``, the grouping Pyroscope's own Kubernetes discovery uses."""
    return f"{namespace}/{workload.name}" if namespace else workload.name


@dataclass(frozen=True, kw_only=True)
class SinkPlan:
    env: list[JsonObject]
    """The agent's env entries for the labels and the sinks, in a fixed order."""
    volume: JsonObject | None
    """The Secret volume to add to the pod (its name is the caller's), or None."""
    sinks: tuple[str, ...]
    """The sinks the agent is connected to: "pyroscope", "s3" (for the status annotation)."""
    warnings: tuple[str, ...]


def _value(name: str, value: str) -> JsonObject:
    return {"name": name, "value": value}


def _secret_ref(name: str, *, secret: str, key: str) -> JsonObject:
    return {
        "name": name,
        "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}},
    }


def plan_sinks(
    pod: JsonObject, *, namespace: str, options: Options, settings: Settings, volume_name: str
) -> SinkPlan:
    """The labels and sink settings for the agent of `pod` (created in `namespace`).

    `volume_name` is the (collision-free) name the Secret volume gets if one is needed.
    """
    workload = workload_of(pod)
    service_name = options.service_name or default_service_name(
        namespace=namespace, workload=workload
    )
    env: list[JsonObject] = [
        {
            "name": "TRACECAR_AGENT_NODE_NAME",
            "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
        },
        # kind/name, the agent's `workload` label (agent/settings.py): deployment/web.
        _value("TRACECAR_AGENT_WORKLOAD", f"{workload.kind.lower()}/{workload.name}"),
        _value("TRACECAR_AGENT_SERVICE_NAME", service_name),
    ]
    warnings: list[str] = []
    sinks: list[str] = []
    volume: JsonObject | None = None
    configured = settings.pyroscope_url is not None or settings.s3_bucket is not None

    if not options.push:
        if options.continuous:
            warnings.append(
                "tracecar: tracecar.dev/continuous ignored: pushing to the stores is off for "
                'this pod (tracecar.dev/push "false" on the pod or its namespace)'
            )
        return SinkPlan(env=env, volume=None, sinks=(), warnings=tuple(warnings))

    if settings.pyroscope_url is not None:
        sinks.append("pyroscope")
        env.append(_value("TRACECAR_AGENT_PYROSCOPE_URL", settings.pyroscope_url))
        if settings.pyroscope_tenant is not None:
            env.append(_value("TRACECAR_AGENT_PYROSCOPE_TENANT", settings.pyroscope_tenant))
        if settings.pyroscope_auth == "basic":
            env.append(
                _value("TRACECAR_AGENT_PYROSCOPE_USER_FILE", f"{SECRET_DIR}/{PYROSCOPE_USER_KEY}")
            )
            env.append(
                _value(
                    "TRACECAR_AGENT_PYROSCOPE_PASSWORD_FILE",
                    f"{SECRET_DIR}/{PYROSCOPE_PASSWORD_KEY}",
                )
            )
        elif settings.pyroscope_auth == "bearer":
            env.append(
                _value("TRACECAR_AGENT_PYROSCOPE_TOKEN_FILE", f"{SECRET_DIR}/{PYROSCOPE_TOKEN_KEY}")
            )
        if settings.pyroscope_auth != "none":
            volume = {
                "name": volume_name,
                "secret": {
                    "secretName": settings.sinks_secret,
                    "optional": True,
                    "defaultMode": SECRET_MODE,
                },
            }

    if settings.s3_bucket is not None:
        sinks.append("s3")
        if settings.s3_endpoint is not None:
            env.append(_value("TRACECAR_AGENT_S3_ENDPOINT", settings.s3_endpoint))
        env.append(_value("TRACECAR_AGENT_S3_BUCKET", settings.s3_bucket))
        if settings.s3_prefix is not None:
            env.append(_value("TRACECAR_AGENT_S3_PREFIX", settings.s3_prefix))
        if settings.s3_region is not None:
            env.append(_value("TRACECAR_AGENT_S3_REGION", settings.s3_region))
        if settings.s3_path_style is not None:
            env.append(_value("TRACECAR_AGENT_S3_PATH_STYLE", str(settings.s3_path_style).lower()))
        if settings.s3_credentials == "secret":
            secret = settings.sinks_secret
            env.append(_secret_ref("AWS_ACCESS_KEY_ID", secret=secret, key=AWS_ACCESS_KEY_KEY))
            env.append(_secret_ref("AWS_SECRET_ACCESS_KEY", secret=secret, key=AWS_SECRET_KEY_KEY))

    if configured and settings.spool_max_bytes is not None:
        env.append(_value("TRACECAR_AGENT_SPOOL_MAX_BYTES", str(settings.spool_max_bytes)))
    if options.continuous:
        if settings.pyroscope_url is None:
            warnings.append(
                "tracecar: tracecar.dev/continuous: no profile store is configured "
                "(the webhook's TRACECAR_WEBHOOK_PYROSCOPE_URL): the agent records "
                "continuously, but only into its own spool"
            )
        env.append(_value("TRACECAR_AGENT_CONTINUOUS", "true"))
        if settings.continuous_interval_s is not None:
            env.append(
                _value("TRACECAR_AGENT_CONTINUOUS_INTERVAL_S", str(settings.continuous_interval_s))
            )
    return SinkPlan(env=env, volume=volume, sinks=tuple(sinks), warnings=tuple(warnings))


def flush_grace(spec: JsonObject, *, sinks: tuple[str, ...], settings: Settings) -> int | None:
    """The terminationGracePeriodSeconds to set so the agent can flush its spool after
    SIGTERM, or None to leave the pod's own. Only pods that push and ask for less than
    ``settings.flush_grace_s`` (Kubernetes' default when unset: 30) are raised."""
    if not sinks:
        return None
    current = spec.get("terminationGracePeriodSeconds")
    asked = current if isinstance(current, int) and not isinstance(current, bool) else 30
    return settings.flush_grace_s if asked < settings.flush_grace_s else None
