"""The certs package's exceptions; Kubernetes API errors become these at `certs._kube`.

CertsError                      anything this package raises on purpose
├── InvalidRequest              (certs._pki) names that cannot go into a certificate
└── ClusterError                the cluster could not be read or changed
    ├── ClusterUnreachable      no kubeconfig / in-cluster config, connection
    │                           refused, timeouts, 5xx: retrying later may help
    ├── NotFound                the Secret's namespace or the webhook configuration
    │                           does not exist (install the manifests first)
    ├── Forbidden               401/403: RBAC does not grant the verb on the object
    ├── Conflict                409: another writer got there first (lost the race
    │                           on create, or a stale resourceVersion on update)
    └── Rejected                422/400: the API server refused the object
"""

from __future__ import annotations


class CertsError(Exception):
    """Base of everything the certs package raises on purpose."""


class ClusterError(CertsError):
    """The cluster could not be read or changed."""


class ClusterUnreachable(ClusterError):
    """No configuration to reach an API server, or it did not answer properly."""


class NotFound(ClusterError):
    """An object the command needs (namespace, webhook configuration) is missing."""


class Forbidden(ClusterError):
    """The service account lacks a permission (RBAC)."""


class Conflict(ClusterError):
    """Someone else changed the object between our read and our write."""


class Rejected(ClusterError):
    """The API server refused the object as invalid."""
