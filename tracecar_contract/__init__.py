"""The agent container's contract: what every place that runs the agent agrees on.

The webhook's injection (:mod:`webhook.inject`) and the plugin's attach
(:mod:`kubectl_tracecar._attach`) both render an agent container; what it is called,
which image and command it runs, the capabilities it needs, its env and its port come
from here, so the two cannot drift. Pure constants and two pure helpers; it imports
nothing of either service (an import-linter contract keeps it so).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

AGENT_NAME: Final = "tracecar-agent"
"""The injected container's name; attached ones get a random suffix."""
DEFAULT_IMAGE: Final = "localhost/tracecar-agent:0.1.0"
DEFAULT_CORE_IMAGE: Final = "localhost/tracecar-agent-core:0.1.0"
"""The ``core`` variant (Dockerfile.agent's target): perf, py-spy, jattach; no bpftrace,
LTTng or gdb. Chosen per pod by ``tracecar.dev/image-variant: core`` or by the plugin's
``attach --variant core``."""
IMAGE_VARIANTS: Final = ("full", "core")


def is_core_image(image: str | None) -> bool:
    """An agent image of the core variant, by its repository's name (``...-core``)."""
    if not image:
        return False
    name = image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]
    return name.endswith("-core")


AGENT_COMMAND: Final = ("tracecar-agent",)
HEALTHCHECK: Final = ("tracecar-agent", "healthcheck")
STARTUP_CHECK: Final = ("tracecar-agent", "healthcheck", "--wait", "60")
"""The native sidecar's postStart hook: one exec that returns as soon as the agent serves
(it does within a second of its start: agent.boot), so the app starts then. The kubelet
gives a hook no timeout of its own: after 60 s without an answer the hook fails, and the
kubelet restarts the agent's container."""
# No SYS_RESOURCE: since Linux 5.11 BPF maps are charged to the memory cgroup, not
# RLIMIT_MEMLOCK, and perf's ring buffers past perf_event_mlock_kb need IPC_LOCK or
# PERFMON, not SYS_RESOURCE. Asking for it also breaks on nodes whose runtime lacks it
# in its bounding set: runc then fails the container with "unable to apply caps"
# (found on the real-cluster stage, where the VM has no CAP_SYS_RESOURCE).
CAPABILITIES: Final = ("SYS_ADMIN", "SYS_PTRACE", "PERFMON", "BPF", "IPC_LOCK")
DATA_DIR: Final = "/var/lib/tracecar"
DEFAULT_PORT: Final = 7780
MIN_PORT: Final = 1024
MAX_PORT: Final = 65535
PORT_ENV: Final = "TRACECAR_AGENT_PORT"
TOKEN_ENV: Final = "TRACECAR_AGENT_TOKEN"  # noqa: S105  # the env var name, not a token
AUTH_ENV: Final = "TRACECAR_AGENT_AUTH"
MODE_ENV: Final = "TRACECAR_AGENT_MODE"
IDLE_ENV: Final = "TRACECAR_AGENT_IDLE_EXIT_S"

JsonObject = dict[str, Any]


def agent_env(*, port: int) -> list[JsonObject]:
    """The agent's own env, the same wherever it runs (injected or attached): loopback,
    its port, the pod it is in (downward API), its data directory."""
    return [
        {"name": "TRACECAR_AGENT_HOST", "value": "127.0.0.1"},
        {"name": PORT_ENV, "value": str(port)},
        {"name": "TRACECAR_AGENT_POD_NAME", "valueFrom": _field("metadata.name")},
        {"name": "TRACECAR_AGENT_POD_NAMESPACE", "valueFrom": _field("metadata.namespace")},
        {"name": "TRACECAR_AGENT_POD_UID", "valueFrom": _field("metadata.uid")},
        {"name": "TRACECAR_AGENT_DATA_DIR", "value": DATA_DIR},
    ]


def _field(path: str) -> JsonObject:
    return {"fieldRef": {"fieldPath": path}}


def declared_ports(containers: Iterable[Mapping[str, Any]]) -> dict[int, str]:
    """Ports the pod's containers declare (container and host ports) -> container name."""
    out: dict[int, str] = {}
    for c in containers:
        ports = c.get("ports")
        for p in ports if isinstance(ports, list) else []:
            if not isinstance(p, dict):
                continue
            for key in ("containerPort", "hostPort"):
                if isinstance(p.get(key), int):
                    out.setdefault(p[key], str(c.get("name", "?")))
    return out


def choose_port(wanted: int, taken: Mapping[int, str]) -> int:
    """``wanted`` if no container declares it, else the next free port (wrapping around)."""
    port = wanted
    for _ in range(MAX_PORT - MIN_PORT + 1):
        if port not in taken:
            return port
        port = port + 1 if port < MAX_PORT else MIN_PORT
    return wanted  # every port declared: impossible in practice (a pod has a few)
