"""Certificates for the admission webhook: a CA and a serving certificate.

Two modes share one decision (`certs._pki.reconcile`: create what is missing, renew
when a third of the lifetime is left or the names are not covered, else keep):

- local (`ensure_local_certs`, `tracecar-certs local`): PEM files in a directory,
  written atomically (`certs._files`);
- cluster (`tracecar-certs cluster`): a `kubernetes.io/tls` Secret plus the
  MutatingWebhookConfiguration's caBundle (`certs._cluster` decides through a small
  seam, `certs._kube` is its only implementation that talks to the API server).
"""

from certs._files import LocalCertPaths, ensure_local_certs

__all__ = ["LocalCertPaths", "ensure_local_certs"]
