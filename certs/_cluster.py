"""Cluster mode: keep the webhook's TLS Secret and the caBundle of its configuration current.

Owns the decision and its order of steps, and talks to the cluster only through the
`ClusterApi` protocol below: `certs._kube` implements it with the kubernetes client,
tests implement it in memory. Nothing here imports `kubernetes`.

One run (`ensure_cluster_certs`), idempotent:
1. read the Secret; turn it into `Material` (or None when absent or empty);
2. `_pki.reconcile`: keep it, or renew the serving certificate (a third of its lifetime
   left, names not covered, rotation asked) or the CA;
3. patch the caBundle of every webhook entry whose bundle differs. This comes BEFORE
   the Secret write on purpose: a renewed CA is published next to the old one, so the
   API server trusts both while webhook pods still serve the old certificate; the
   other order would leave a window where pods serve a certificate the API server
   cannot verify (and with failurePolicy Ignore, pods would silently go uninjected);
4. create or replace the Secret (optimistic concurrency on resourceVersion).
A concurrent run that loses the race (Conflict) starts over from step 1, then adopts
the winner's Secret and re-patches the caBundle to match it.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypedDict

from cryptography import x509

from certs import _pki
from certs.errors import Conflict, NotFound, Rejected

SECRET_TYPE = "kubernetes.io/tls"  # noqa: S105 (a Secret type, not a password)
# Keys of the Secret: the standard TLS pair, ca.crt (as cert-manager writes it) and the
# CA's key, kept so renewals reuse the CA and the caBundle does not have to change.
TLS_CRT, TLS_KEY, CA_CRT, CA_KEY = "tls.crt", "tls.key", "ca.crt", "ca.key"
MANAGED_BY = {"app.kubernetes.io/managed-by": "tracecar-certs"}
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class StoredSecret:
    """A Secret as read: its type, decoded data and the resourceVersion to update against."""

    type: str
    data: Mapping[str, bytes]
    resource_version: str


@dataclass(frozen=True)
class WebhookEntry:
    """One entry of a MutatingWebhookConfiguration's `webhooks` list."""

    name: str
    ca_bundle: bytes


class JsonPatchOp(TypedDict):
    op: Literal["add", "test"]
    path: str
    value: str


class ClusterApi(Protocol):
    """The seam: the few API calls cluster mode needs. Implementations raise certs.errors."""

    def read_secret(self, *, namespace: str, name: str) -> StoredSecret | None:
        """The Secret, or None when it does not exist."""
        ...

    def create_secret(
        self, *, namespace: str, name: str, type: str, data: Mapping[str, bytes]
    ) -> None:
        """Create it; Conflict when it already exists."""
        ...

    def replace_secret(
        self, *, namespace: str, name: str, data: Mapping[str, bytes], resource_version: str
    ) -> None:
        """Replace its data; Conflict when resource_version is stale."""
        ...

    def read_webhooks(self, *, name: str) -> list[WebhookEntry]:
        """The entries of the MutatingWebhookConfiguration; NotFound when it is absent."""
        ...

    def patch_webhooks(self, *, name: str, patch: Sequence[JsonPatchOp]) -> None:
        """Apply an RFC 6902 patch; Conflict when a `test` op fails (the list changed)."""
        ...


@dataclass(frozen=True)
class ClusterResult:
    """What one run did, for the command's JSON report."""

    secret: Literal["created", "updated", "unchanged"]
    webhooks_patched: tuple[str, ...]
    reasons: tuple[str, ...]
    not_after: dt.datetime
    dns_names: tuple[str, ...] = field(default=())

    def as_report(self) -> dict[str, object]:
        return {
            "secret": self.secret,
            "webhooks_patched": list(self.webhooks_patched),
            "reasons": list(self.reasons),
            "not_after": self.not_after.isoformat(),
            "dns_names": list(self.dns_names),
        }


def service_dns_names(*, service: str, namespace: str, cluster_domain: str) -> list[str]:
    """Every name the Service answers to; the API server dials `SERVICE.NAMESPACE.svc`."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.{cluster_domain}",
    ]


def material_of(secret: StoredSecret | None) -> _pki.Material | None:
    """The Secret's PEMs, or None when it has no CA (absent, empty, made by hand)."""
    if secret is None or not secret.data.get(CA_CRT):
        return None
    return _pki.Material(
        ca_bundle=secret.data.get(CA_CRT, b""),
        ca_key=secret.data.get(CA_KEY, b""),
        cert=secret.data.get(TLS_CRT, b""),
        key=secret.data.get(TLS_KEY, b""),
    )


def secret_data(material: _pki.Material) -> dict[str, bytes]:
    return {
        TLS_CRT: material.cert,
        TLS_KEY: material.key,
        CA_CRT: material.ca_bundle,
        CA_KEY: material.ca_key,
    }


def ca_bundle_patch(entries: Sequence[WebhookEntry], bundle: bytes) -> list[JsonPatchOp]:
    """Ops setting caBundle on every entry that differs; each guarded by a test of its name.

    The `test` makes the patch fail (Conflict) rather than touch the wrong entry when
    someone reordered the list between our read and our patch.
    """
    encoded = base64.b64encode(bundle).decode("ascii")
    ops: list[JsonPatchOp] = []
    for index, entry in enumerate(entries):
        if entry.ca_bundle == bundle:
            continue
        ops.append({"op": "test", "path": f"/webhooks/{index}/name", "value": entry.name})
        ops.append(
            {"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": encoded}
        )
    return ops


def ensure_cluster_certs(
    api: ClusterApi,
    *,
    namespace: str,
    service: str,
    secret: str,
    webhook_config: str,
    cluster_domain: str = "cluster.local",
    rotate: bool = False,
    now: dt.datetime | None = None,
    serving_validity: dt.timedelta = _pki.SERVING_VALIDITY,
) -> ClusterResult:
    """One idempotent reconciliation of the Secret and the webhook configuration."""
    dns_names = service_dns_names(
        service=service, namespace=namespace, cluster_domain=cluster_domain
    )
    names = _pki.Names.of(dns_names=dns_names)
    last: Conflict | None = None
    for _attempt in range(MAX_ATTEMPTS):
        try:
            return _attempt_once(
                api,
                namespace=namespace,
                secret=secret,
                webhook_config=webhook_config,
                names=names,
                # Only the first attempt rotates: after a lost race the winner's fresh
                # certificate is as good as ours would be.
                rotate=rotate and last is None,
                now=now or _pki.utcnow(),
                serving_validity=serving_validity,
            )
        except Conflict as exc:
            last = exc
    assert last is not None
    raise Conflict(f"gave up after {MAX_ATTEMPTS} attempts, still conflicting: {last}")


def _attempt_once(
    api: ClusterApi,
    *,
    namespace: str,
    secret: str,
    webhook_config: str,
    names: _pki.Names,
    rotate: bool,
    now: dt.datetime,
    serving_validity: dt.timedelta,
) -> ClusterResult:
    stored = api.read_secret(namespace=namespace, name=secret)
    if stored is not None and stored.type != SECRET_TYPE:
        raise Rejected(
            f"Secret {namespace}/{secret} has type {stored.type!r}, expected {SECRET_TYPE!r}: "
            "delete it (the type of a Secret cannot change) and run again"
        )
    current = material_of(stored)
    outcome = _pki.reconcile(
        current, names=names, now=now, rotate=rotate, serving_validity=serving_validity
    )
    material = outcome.material

    entries = api.read_webhooks(name=webhook_config)
    if not entries:
        raise NotFound(f"MutatingWebhookConfiguration {webhook_config} has no webhooks")
    patch = ca_bundle_patch(entries, material.ca_bundle)
    if patch:
        api.patch_webhooks(name=webhook_config, patch=patch)
    patched = tuple(e.name for e in entries if e.ca_bundle != material.ca_bundle)

    action: Literal["created", "updated", "unchanged"] = "unchanged"
    data = secret_data(material)
    if stored is None:
        api.create_secret(namespace=namespace, name=secret, type=SECRET_TYPE, data=data)
        action = "created"
    elif dict(stored.data) != data:
        api.replace_secret(
            namespace=namespace, name=secret, data=data, resource_version=stored.resource_version
        )
        action = "updated"

    cert = x509.load_pem_x509_certificate(material.cert)
    return ClusterResult(
        secret=action,
        webhooks_patched=patched,
        reasons=outcome.reasons,
        not_after=cert.not_valid_after_utc,
        dns_names=names.dns,
    )
