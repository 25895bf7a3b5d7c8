"""The webhook's settings: environment variables prefixed ``TRACECAR_WEBHOOK_``.

Nothing reads the environment at import time: :func:`get_settings` builds the
settings once, on first use; tests pass a :class:`Settings` to
:func:`webhook.app.create_app` instead.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tracecar_contract import DEFAULT_IMAGE, DEFAULT_PORT

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
"""Kubernetes resource quantities in their common forms ("250m", "1", "0.5", "128Mi")."""
IMAGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$"
"""An image reference: registry/path:tag or @sha256:digest, no spaces or shell characters."""
PullPolicy = Literal["Always", "IfNotPresent", "Never"]
AgentAuth = Literal["token", "none"]
StoreAuth = Literal["none", "basic", "bearer"]
S3Credentials = Literal["secret", "pod"]
URL_PATTERN = r"^https?://[A-Za-z0-9._~:/?#@!$&'()*+,;=%\[\]-]{1,2000}$"
"""An http(s) URL without spaces or quotes (it lands in the agent's env, never a shell)."""
BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
"""S3 bucket naming rules (lower case, digits, dots, hyphens; 3-63 characters)."""
PREFIX_PATTERN = r"^[A-Za-z0-9!_.*'()/-]{0,512}$"
"""S3's "safe characters" for object keys."""
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
"""A Kubernetes object name (DNS subdomain): the Secret holding the stores' credentials."""


class Settings(BaseSettings):
    # Frozen: read once at start-up and never changed; caches (webhook.options) key on it.
    model_config = SettingsConfigDict(env_prefix="TRACECAR_WEBHOOK_", extra="ignore", frozen=True)

    # --- serving -----------------------------------------------------------
    cert_file: Path | None = None
    """PEM serving certificate (chain); reloaded when the file changes."""
    key_file: Path | None = None
    """PEM private key of `cert_file`."""
    host: str = "0.0.0.0"
    port: int = Field(default=8443, ge=1, le=65535)
    cert_reload_interval_s: float = Field(default=1.0, gt=0, le=60)
    """How often the certificate files are checked for a rotation."""
    max_body_bytes: int = Field(default=4 << 20, ge=1024)
    """Larger requests get 413 (the API server caps its own requests at 3 MiB)."""
    keep_alive_s: int = Field(default=10, ge=1)
    """Idle keep-alive connections are closed after this (the API server reuses them;
    a closed connection's memory is only released when this timer fires)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    """One JSON object per line (for log collectors), or text for a terminal."""
    namespace: str = "tracecar-system"
    """The webhook's own namespace: its pods are never injected."""
    bench_floor: bool = False
    """Expose ``POST /floor`` returning a fixed AdmissionReview (benchmark baseline only)."""

    # --- the injected agent --------------------------------------------------
    agent_image: str = Field(default=DEFAULT_IMAGE, pattern=IMAGE_PATTERN)
    agent_image_pull_policy: PullPolicy = "IfNotPresent"
    agent_port: int = Field(default=DEFAULT_PORT, ge=1024, le=65535)
    agent_cpu_request: str = Field(default="50m", pattern=QUANTITY_PATTERN)
    agent_cpu_limit: str = Field(default="1", pattern=QUANTITY_PATTERN)
    # Measured: the idle agent (API + lttng-sessiond) holds ~66 MB; a smaller request
    # puts the pod over its requests, first in line for eviction under memory pressure.
    # The limit leaves room for `perf script` unwinding ~100k DWARF samples (several
    # hundred MB) next to the agent: an OOM kill there loses the profile.
    agent_memory_request: str = Field(default="128Mi", pattern=QUANTITY_PATTERN)
    agent_memory_limit: str = Field(default="1Gi", pattern=QUANTITY_PATTERN)

    # --- defaults of the per-pod opt-ins (annotations under tracecar.dev/) ------
    default_privileged: bool = False
    default_runtime_symbols: bool = False
    default_share_tmp: bool = False
    default_host_paths: bool = False
    default_native_sidecar: bool = True
    """Native sidecars need Kubernetes 1.29+; set false for older clusters."""
    default_auth: AgentAuth = "token"
    """``none`` turns the agent's authentication off for every pod without a
    ``tracecar.dev/auth`` annotation: see docs/security.md before doing so."""

    # --- the stores the agents push to (cluster-wide; docs/stores.md) ----------
    # Each injected agent gets the matching TRACECAR_AGENT_* settings unless the pod or
    # its namespace opts out (tracecar.dev/push: "false"). Credentials never appear
    # here or in the pod spec: they come from the Secret `sinks_secret`, which must
    # exist in each profiled pod's namespace (a pod can only read its own namespace's).
    pyroscope_url: str | None = Field(default=None, pattern=URL_PATTERN)
    """Pyroscope's base URL, e.g. ``http://pyroscope.observability.svc:4040``."""
    pyroscope_tenant: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.!*'()-]{1,150}$")
    """The X-Scope-OrgID of a multi-tenant Pyroscope (Grafana Cloud: the stack's user id)."""
    pyroscope_auth: StoreAuth = "none"
    """``basic``: keys ``pyroscope-username``/``pyroscope-password`` of the Secret,
    ``bearer``: key ``pyroscope-token``; mounted as files, read by the agent."""
    s3_endpoint: str | None = Field(default=None, pattern=URL_PATTERN)
    """Unset: AWS S3 itself (from the region); set for S3-compatible stores."""
    s3_bucket: str | None = Field(default=None, pattern=BUCKET_PATTERN)
    """Unset: no object store (artifacts stay in the pod)."""
    s3_prefix: str | None = Field(default=None, pattern=PREFIX_PATTERN)
    s3_region: str | None = Field(default=None, pattern=r"^[a-z0-9-]{2,32}$")
    s3_path_style: bool | None = None
    """Path-style addressing (MinIO and most S3-compatible stores need it)."""
    s3_credentials: S3Credentials = "secret"
    """``secret``: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from the Secret's keys
    ``aws-access-key-id``/``aws-secret-access-key``; ``pod``: none injected, the SDK's
    default chain finds the pod's own (web identity via its service account, EKS Pod
    Identity, instance metadata)."""
    sinks_secret: str = Field(default="tracecar-sinks", pattern=NAME_PATTERN)
    """The Secret, in each profiled pod's namespace, holding the stores' credentials.
    Optional: a pod whose namespace lacks it starts anyway, and its agent reports the
    missing credentials per sink in /capabilities."""
    spool_max_bytes: int | None = Field(default=None, ge=1 << 20)
    """The agent's on-disk spool bound (unset: the agent's default)."""
    default_push: bool = True
    """Whether injected agents are connected to the stores configured above, unless a
    ``tracecar.dev/push`` annotation or the namespace's label says otherwise."""
    default_continuous: bool = False
    """Continuous profiling for every injected pod (usually turned on per namespace or
    per workload instead: ``tracecar.dev/continuous``)."""
    continuous_interval_s: int | None = Field(default=None, ge=1, le=3600)
    """The agents' continuous interval (unset: the agent's default, 15 s)."""
    flush_grace_s: int = Field(default=30, ge=0, le=3600)
    """The least terminationGracePeriodSeconds a pushing pod gets, so its agent can flush
    its spool after SIGTERM; pods asking for less are raised to it (with a warning).
    30 is Kubernetes' own default, so only pods that lowered it change."""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
