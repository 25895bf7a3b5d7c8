"""The tracecar admission webhook: injects the tracecar agent sidecar into labelled pods.

Layout (plan -> render -> answer, all pure but the server shell):

- `settings`  environment settings (``TRACECAR_WEBHOOK_*``), read on first use;
- `_types`    the AdmissionReview wire format and the pod-shaped JSON aliases;
- `decision`  whether a pod gets the agent, and why not;
- `options`   the ``tracecar.dev/*`` annotations -> options plus warnings;
- `inject`    the sidecar and the pod mutation, emitted with its JSONPatch;
- `patch`     the JSONPatch builder (mutate + record ops, RFC 6901 escaping);
- `sinks`     what each agent is told about the stores and itself (pure rendering);
- `tokens`    the agent's per-pod bearer token, behind a seam;
- `review`    request validation and the AdmissionReview answer;
- `app`, `deps`, `routers`, `limits`, `metrics`, `logs`  the FastAPI shell;
- `tls`, `__main__`  uvicorn over TLS with certificate hot reload.
"""

from importlib.metadata import PackageNotFoundError, version

# One version source for both services and the plugin: the package's own (pyproject.toml).
try:
    __version__ = version("tracecar")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
