"""The ephemeral agent container, rendered purely from the pod and the options.

It carries the same capabilities, command and env as the container the webhook injects
(both read them from :mod:`tracecar_contract`, so the two cannot drift), and
what an ephemeral container cannot have is left out: no resources, ports, probes or
new volumes (Kubernetes refuses them). ``targetContainerName`` puts it in the app
container's PID namespace; the pod's network namespace is shared anyway, so the agent
listens on the pod's loopback exactly as an injected one does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from kubectl_tracecar._pods import JsonObject
from kubectl_tracecar._pods import used_names as _used_names
from tracecar_contract import (
    AGENT_COMMAND,
    AGENT_NAME,
    CAPABILITIES,
    DEFAULT_PORT,
    IDLE_ENV,
    MODE_ENV,
    PORT_ENV,
    TOKEN_ENV,
    agent_env,
    choose_port,
    declared_ports,
)

DEFAULT_IDLE_S = 1800.0


@dataclass(frozen=True, slots=True)
class AttachOptions:
    image: str
    target: str
    token: str
    suffix: str  # random, lowercase: a later attach gets a fresh name
    privileged: bool = False
    idle_exit_s: float = DEFAULT_IDLE_S
    pull_policy: str = "IfNotPresent"
    container_names: dict[str, str] = field(default_factory=dict)
    """Container id -> name from the pod's status: the agent names processes by it."""


def render(pod: JsonObject, *, options: AttachOptions) -> JsonObject:
    spec = pod.get("spec") or {}
    containers = [
        *(spec.get("initContainers") or []),
        *(spec.get("containers") or []),
    ]
    taken = declared_ports(containers)
    # Earlier agents (a stopped attached one may still be restarted by nobody, but a
    # running one holds its port in the pod's network namespace) declare no ports.
    for c in [*containers, *(spec.get("ephemeralContainers") or [])]:
        for e in c.get("env") or []:
            if e.get("name") == PORT_ENV and str(e.get("value", "")).isdigit():
                taken.setdefault(int(e["value"]), str(c.get("name")))
    port = choose_port(DEFAULT_PORT, taken)
    name = f"{AGENT_NAME}-{options.suffix}"
    if name in _used_names(pod):  # the suffix is random; a clash is all but impossible
        raise ValueError(f"container name {name} is taken")
    security: JsonObject = {
        "runAsUser": 0,
        "runAsNonRoot": False,
        "capabilities": {"add": list(CAPABILITIES)},
    }
    if options.privileged:
        security["privileged"] = True
    return {
        "name": name,
        "image": options.image,
        "imagePullPolicy": options.pull_policy,
        "command": list(AGENT_COMMAND),
        "targetContainerName": options.target,
        "env": [
            *agent_env(port=port),
            {"name": MODE_ENV, "value": "attached"},
            {"name": IDLE_ENV, "value": f"{options.idle_exit_s:g}"},
            # No session daemon: without the webhook's shared /var/run/lttng no app
            # could register with it (the agent answers LTTng requests with a 409).
            {"name": "TRACECAR_AGENT_LTTNG_START_SESSIOND", "value": "false"},
            {
                "name": "TRACECAR_AGENT_CONTAINER_NAMES",
                "value": json.dumps(options.container_names),
            },
            {"name": TOKEN_ENV, "value": options.token},
        ],
        "securityContext": security,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
