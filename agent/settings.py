"""The agent's settings: environment variables prefixed ``TRACECAR_AGENT_``.

Nothing reads the environment at import time: :func:`get_settings` builds the
settings once, on first use, and tests override it (``app.dependency_overrides``
or by passing a :class:`Settings` to :func:`agent.app.create_app`).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRACECAR_AGENT_", extra="ignore")

    # --- service ---------------------------------------------------------
    host: str = "127.0.0.1"
    """Loopback by default: reachable by port-forward and the pod's own containers only."""
    port: int = Field(default=7780, ge=1, le=65535)
    auth: Literal["token", "none"] = "token"
    """``token``: every endpoint but ``/healthz`` requires ``Authorization: Bearer <token>``.
    ``none``: no authentication, every container of the pod can use the agent (logged as
    a warning, shown in ``/capabilities``; see docs/security.md)."""
    token: SecretStr | None = None
    """The bearer token (the webhook sets a random one per pod). A secret: never logged."""
    token_file: Path | None = None
    """A file holding the token (first line), when ``token`` is unset."""
    generated_token_file: Path = Path("/run/tracecar/agent-token")
    """With neither ``token`` nor ``token_file``, the agent generates a token at start-up
    and writes it here (mode 0600), removed at shutdown."""
    data_dir: Path = Path("/var/lib/tracecar")
    """Where artifacts (perf.data, flame graphs, traces) live."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    """One JSON object per line (for log collectors), or text for a terminal."""
    pod_name: str | None = None
    pod_namespace: str | None = None
    pod_uid: str | None = None
    mode: Literal["sidecar", "attached"] = "sidecar"
    """``attached``: an ephemeral container added by ``kubectl tracecar attach``. It
    shares the target container's PID namespace only, and has none of the webhook's
    volumes: no shared /var/run/lttng, so LTTng sessions are refused (409, saying why)."""
    image_variant: Literal["full", "core"] = "full"
    """The image this agent runs from (each Dockerfile.agent target sets it): ``core``
    lacks bpftrace, LTTng, babeltrace2 and gdb, and says so (:mod:`agent.variant`)."""
    idle_exit_s: float | None = Field(default=None, gt=0)
    """Exit after this long with no request and nothing running (attached agents: an
    ephemeral container cannot be removed, so it ends itself)."""
    container_names: dict[str, str] = Field(default_factory=dict)
    """Container id -> name (JSON), for processes whose container has no
    TRACECAR_CONTAINER variable (pods the webhook did not mutate)."""

    # --- storage (shared by every kind of job) ---------------------------
    max_storage_bytes: int = Field(default=1 << 30, ge=1 << 20)
    """Artifacts beyond this are evicted, oldest finished job first; never a running job's."""

    # --- CPU profiling ---------------------------------------------------
    max_concurrent_profiles: int = Field(default=2, ge=1)
    default_duration_s: float = Field(default=10.0, gt=0)
    max_duration_s: float = Field(default=300.0, gt=0)
    default_frequency_hz: int = Field(default=99, ge=1)
    max_frequency_hz: int = Field(default=999, ge=1)
    perf_timeout_slack_s: float = Field(default=60.0, gt=0)
    """Post-processing time allowed past a recording's duration before it is killed."""
    py_spy: str = "auto"
    """The py-spy executable for Python targets: ``auto`` (the one installed with the
    agent, else PATH), a path, or ``off`` (Python processes are profiled with perf)."""
    recorder_max_retain_s: float = Field(default=86400.0, ge=2)
    """The flight recorder's largest time bound (POST /recorder retain_s)."""
    recorder_max_bytes: int = Field(default=256 << 20, ge=1024)
    """The flight recorder's largest size bound (POST /recorder max_bytes), in memory."""
    max_triggers: int = Field(default=8, ge=1)
    """Triggers watching at once (POST /triggers)."""
    async_profiler_lib: Path | None = None
    """async-profiler's ``libasyncProfiler.so`` (linux-x64), copied into each JVM of an
    alloc profile and loaded there for its Java methods (docs/memory.md). Unset: the
    image's ``/opt/tracecar/lib/libasyncProfiler.so``, else the copy scripts/setup keeps in
    ``/var/cache/tracecar/async-profiler/``."""
    java_alloc_interval_bytes: int = Field(default=512 * 1024, ge=1024)
    """alloc profiles of JVMs: Java heap bytes allocated per sample, on average
    (async-profiler's ``alloc=``; its default, 512 KiB, costs next to nothing)."""
    python_alloc_interval_bytes: int = Field(default=512 * 1024, ge=1024, le=1 << 40)
    """alloc profiles of CPython: bytes allocated through Python's allocators per sample of
    tracecar's sampler, on average (docs/memory.md; bench/python_memory_bench.py)."""
    python_alloc_sampler_dir: Path | None = None
    """A directory holding a prebuilt ``tracecar-pyalloc.so`` (the sampler,
    agent/profiling/pyalloc_sampler.c; the image's /opt/tracecar/lib). Unset: the agent
    builds it at start-up when gcc is there, else alloc profiles of Python processes keep
    the C-allocator view."""
    debuginfod_urls: str = ""
    """Debuginfod servers for stripped native objects' debug files, space-separated (the
    standard ``DEBUGINFOD_URLS`` meaning); empty: none asked (docs/profiling.md)."""
    debuginfod_cache_dir: Path | None = None
    """Where fetched debug files are kept; default ``data_dir/debuginfod``."""
    debuginfod_cache_max_bytes: int = Field(default=1 << 30, ge=1 << 20)
    """The cache's size limit: least recently used files go first."""
    debuginfod_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """One request to one server; a profile waits for debuginfod 20 s at most in all."""
    offcpu_max_stacks_per_s: int = Field(default=2_000, ge=100)
    """Off-CPU profiles: switches off the CPU recorded (with their stacks) per second;
    beyond it one in w is recorded and weighs w (the cost bound, docs/profiling.md)."""
    offcpu_max_dwarf_stacks_per_s: int = Field(default=1_000, ge=10)
    """Off-CPU profiles unwound by DWARF (perf): user stacks copied per second, judged
    from the targets' switch rate before recording; beyond it one switch-out in N gets
    a stack and weighs N (perf's -c; docs/profiling.md)."""

    # --- stack snapshots (GET /processes/{pid}/stack) -----------------------
    stack_timeout_s: float = Field(default=10.0, gt=0, le=600)
    """How long py-spy, jattach or gdb may take for one snapshot before it is killed
    (a JVM's attach alone can take a few seconds; a snapshot is usually 10-500 ms)."""

    # --- uprobes ---------------------------------------------------------
    max_probes: int = Field(default=8, ge=1)
    probe_default_duration_s: float = Field(default=60.0, gt=0)
    probe_max_duration_s: float = Field(default=3600.0, gt=0)
    probe_max_events: int = Field(default=1_000_000, ge=1)
    probe_max_event_rate: int = Field(default=20_000, ge=1)
    """Events per second kept per probe; the excess is counted as drops."""
    probe_backend: Literal["auto", "bpftrace", "perf-probe"] = "auto"
    allow_raw_bpftrace: bool = False
    """Accept raw bpftrace programs. Off by default: a program is root on the node."""
    instance_id: str | None = None
    """Unique name of this agent instance on the node; unset: :meth:`Settings.instance`."""

    # --- LTTng -----------------------------------------------------------
    lttng_run_dir: Path = Path("/var/run/lttng")
    lttng_start_sessiond: bool = True
    max_lttng_sessions: int = Field(default=4, ge=1)
    lttng_default_max_duration_s: float = Field(default=600.0, gt=0)
    lttng_max_duration_s: float = Field(default=3600.0, gt=0)
    lttng_max_session_bytes: int = Field(default=256 << 20, ge=1 << 20)
    lttng_ndjson_plugin_dir: Path | None = None
    """A directory holding a prebuilt ``babeltrace-plugin-tracecar.so`` (the native NDJSON
    sink, agent/lttng/ndjson_sink.c). Unset: the agent builds it at start-up when gcc and
    libbabeltrace2-dev are there, else converts babeltrace2's text in Python (slower)."""

    # --- sinks: where profiles and artifacts go to outlive the pod (docs/stores.md) ----
    service_name: str | None = None
    """The ``service_name`` label on everything sent; default ``NAMESPACE/WORKLOAD``."""
    workload: str | None = None
    """The owner workload as ``kind/name`` (``deployment/web``), the ``workload`` label;
    default: guessed from the pod's name (a Deployment's pod ``web-7d9f8b6c4-abcde``
    -> ``web``)."""
    node_name: str | None = None
    """The ``node`` label (the webhook sets it from the downward API's spec.nodeName)."""
    pyroscope_url: str | None = None
    """Grafana Pyroscope's base URL (``http://pyroscope.monitoring:4040``): profiles go to
    its push API. Unset: no profile sink."""
    pyroscope_tenant: str | None = None
    """Sent as ``X-Scope-OrgID`` (a multi-tenant Pyroscope, Grafana Cloud's user id)."""
    pyroscope_user_file: Path | None = None
    pyroscope_password_file: Path | None = None
    """Basic auth: files holding the user and the password (a mounted Secret)."""
    pyroscope_token_file: Path | None = None
    """Bearer auth: a file holding the token (a mounted Secret)."""
    s3_endpoint: str | None = None
    """An S3-compatible store's URL (MinIO, Ceph, R2...); unset with a bucket: AWS S3."""
    s3_bucket: str | None = None
    """The artifacts' bucket. Unset: no object sink."""
    s3_prefix: str = "tracecar"
    """Keys are ``PREFIX/NAMESPACE/POD/KIND/ID/FILE``."""
    s3_region: str | None = None
    s3_path_style: bool = False
    """Path-style addressing (``ENDPOINT/BUCKET/KEY``), which most S3-compatible stores need."""
    s3_presign_expiry_s: int = Field(default=3600, ge=60, le=7 * 86400)
    spool_dir: Path | None = None
    """Where what is on its way to a store waits (default ``DATA_DIR/spool``)."""
    spool_max_bytes: int = Field(default=256 << 20, ge=1024)
    """Each sink's spool holds at most this much; beyond it the oldest items are dropped
    (counted in /metrics and /capabilities)."""
    spool_max_age_s: float = Field(default=3600.0, gt=0)
    """Items older than this are dropped unsent (Pyroscope itself refuses profiles older
    than an hour by default)."""
    sink_timeout_s: float = Field(default=30.0, gt=0)
    """One request to a store: connect, send, answer."""
    flush_budget_s: float = Field(default=20.0, ge=0)
    """At shutdown (SIGTERM), how long the spool may take to drain; what is left stays
    on disk for the next start. Keep the pod's terminationGracePeriodSeconds above it."""
    continuous: bool = False
    """Start continuous profiling of the whole pod at start-up into the profile sink
    (the flight recorder at 19 Hz, one profile per process group per interval)."""
    continuous_interval_s: float = Field(default=15.0, ge=1, le=3600)

    def instance(self) -> str:
        """This agent's one name for what it leaves outside itself: the perf-probe event
        group in the node's tracefs, and the prefix of its sessions in the LTTng daemon.

        ``instance_id`` if set, else the whole pod UID, else the PID namespace's inode.
        The whole UID (not its first 8 characters, as the LTTng sessions once had): it
        is unique by construction, not by luck, across every pod a node ever runs (the
        names outlive a crashed agent, and its successor's sweep removes by prefix), and
        it is the string ``kubectl get pod -o jsonpath='{.metadata.uid}'`` prints, so a
        leftover on a node leads back to its pod. A name that must be short hashes it
        (``agent.probes._perfprobe.group_name``). Without a UID (outside Kubernetes) the
        PID namespace: the pod's processes share one, so a restarted agent keeps it.
        """
        if self.instance_id:
            return self.instance_id
        if self.pod_uid:
            return self.pod_uid
        try:
            return "ns" + os.readlink("/proc/self/ns/pid").strip("pid:[]")
        except OSError:
            return f"pid{os.getpid()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
