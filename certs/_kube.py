"""The one module that talks to the Kubernetes API (enforced by an import-linter contract).

Implements `certs._cluster.ClusterApi` with the official kubernetes client and turns
every client error into `certs.errors` at this boundary (see that module for the
tree). Reads use the raw JSON (`_preload_content=False`) and writes send the wire
format (base64 strings), so nothing depends on how a client version models bytes.
Every call has a timeout.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from certs._cluster import MANAGED_BY, JsonPatchOp, StoredSecret, WebhookEntry
from certs.errors import (
    ClusterError,
    ClusterUnreachable,
    Conflict,
    Forbidden,
    NotFound,
    Rejected,
)

TIMEOUT_S = 15.0
FIELD_MANAGER = "tracecar-certs"
T = TypeVar("T")


def translate(exc: ApiException, *, what: str) -> ClusterError:
    """An API error as one of ours, with the server's own message."""
    message = exc.reason or ""
    with contextlib.suppress(ValueError, AttributeError):
        message = json.loads(exc.body or b"{}").get("message", message)
    text = f"{what}: HTTP {exc.status}: {message}"
    status = exc.status or 0
    if status == 404:
        return NotFound(text)
    if status in (401, 403):
        return Forbidden(text + " (check the tracecar-certs Role and ClusterRole)")
    if status == 409:
        return Conflict(text)
    if status in (400, 422):
        # A failed JSON-patch `test` op is answered 422 too ("testing value ... failed:
        # test failed"): the object moved under us, which is a conflict, not bad input.
        if "test failed" in message.lower() or "testing value" in message.lower():
            return Conflict(text)
        return Rejected(text)
    return ClusterUnreachable(text)


def _call(what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except ApiException as exc:
        raise translate(exc, what=what) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise ClusterUnreachable(f"{what}: {exc}") from exc


def _json(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.data)
    return data


class KubeClusterApi:
    """`ClusterApi` over the kubernetes client."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._core = client.CoreV1Api(api_client)
        self._admission = client.AdmissionregistrationV1Api(api_client)

    @classmethod
    def from_environment(cls) -> KubeClusterApi:
        """In-cluster service-account config, else the kubeconfig ($KUBECONFIG or ~/.kube)."""
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except ConfigException:
            try:
                config.load_kube_config()  # type: ignore[no-untyped-call]
            except (ConfigException, OSError) as exc:
                raise ClusterUnreachable(
                    f"no in-cluster service account and no usable kubeconfig: {exc}"
                ) from exc
        return cls(client.ApiClient())

    def read_secret(self, *, namespace: str, name: str) -> StoredSecret | None:
        what = f"reading Secret {namespace}/{name}"
        try:
            body = _json(
                _call(
                    what,
                    lambda: self._core.read_namespaced_secret(
                        name, namespace, _preload_content=False, _request_timeout=TIMEOUT_S
                    ),
                )
            )
        except NotFound:
            return None
        data = {k: base64.b64decode(v) for k, v in (body.get("data") or {}).items()}
        return StoredSecret(
            type=str(body.get("type", "Opaque")),
            data=data,
            resource_version=str(body.get("metadata", {}).get("resourceVersion", "")),
        )

    def create_secret(
        self, *, namespace: str, name: str, type: str, data: Mapping[str, bytes]
    ) -> None:
        body = client.V1Secret(
            api_version="v1",
            kind="Secret",
            metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=dict(MANAGED_BY)),
            type=type,
            data=dict[str, bytes | str](_encode(data)),
        )
        _call(
            f"creating Secret {namespace}/{name}",
            lambda: self._core.create_namespaced_secret(
                namespace,
                body,
                field_manager=FIELD_MANAGER,
                _preload_content=False,
                _request_timeout=TIMEOUT_S,
            ),
        )

    def replace_secret(
        self, *, namespace: str, name: str, data: Mapping[str, bytes], resource_version: str
    ) -> None:
        # A JSON patch guarded by a `test` of resourceVersion: an update that keeps the
        # Secret's other metadata (labels, owner references) and fails on a race.
        patch: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version},
            {"op": "replace", "path": "/data", "value": _encode(data)},
        ]
        _call(
            f"updating Secret {namespace}/{name}",
            lambda: self._core.patch_namespaced_secret(
                name,
                namespace,
                patch,
                field_manager=FIELD_MANAGER,
                _content_type="application/json-patch+json",
                _preload_content=False,
                _request_timeout=TIMEOUT_S,
            ),
        )

    def read_webhooks(self, *, name: str) -> list[WebhookEntry]:
        body = _json(
            _call(
                f"reading MutatingWebhookConfiguration {name}",
                lambda: self._admission.read_mutating_webhook_configuration(
                    name, _preload_content=False, _request_timeout=TIMEOUT_S
                ),
            )
        )
        entries = []
        for hook in body.get("webhooks") or []:
            bundle = (hook.get("clientConfig") or {}).get("caBundle") or ""
            entries.append(WebhookEntry(name=str(hook["name"]), ca_bundle=base64.b64decode(bundle)))
        return entries

    def patch_webhooks(self, *, name: str, patch: Sequence[JsonPatchOp]) -> None:
        _call(
            f"patching MutatingWebhookConfiguration {name}",
            lambda: self._admission.patch_mutating_webhook_configuration(
                name,
                [dict(op) for op in patch],
                field_manager=FIELD_MANAGER,
                _content_type="application/json-patch+json",
                _preload_content=False,
                _request_timeout=TIMEOUT_S,
            ),
        )


def _encode(data: Mapping[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode("ascii") for k, v in data.items()}
