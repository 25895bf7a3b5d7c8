"""The injection: render the agent sidecar and mutate a pod, recording the JSONPatch.

Pure (no I/O; the agent's token comes from the caller's :data:`webhook.tokens.TokenFactory`,
random in the server). :func:`plan_injection` returns the mutated pod, the ops that turn the
original into it, the warnings for the user and the status annotation's content.
Op order matters: app containers are changed first (their list indices are the
original ones), the agent is added last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, TypedDict

import orjson

from tracecar_contract import (
    AGENT_COMMAND,
    AUTH_ENV,
    CAPABILITIES,
    DATA_DIR,
    HEALTHCHECK,
    STARTUP_CHECK,
    TOKEN_ENV,
    agent_env,
    choose_port,
    declared_ports,
)
from webhook import __version__
from webhook._types import JsonObject, PatchOp
from webhook.decision import AGENT_CONTAINER
from webhook.options import (
    STATUS_ANNOTATION,
    NamespacePolicy,
    Options,
    parse_options,
)
from webhook.patch import PatchBuilder
from webhook.settings import AgentAuth, Settings
from webhook.sinks import SECRET_DIR, SinkPlan, flush_grace, plan_sinks
from webhook.tokens import TokenFactory, random_token

LTTNG_DIR: Final = "/var/run/lttng"
TMP_DIR: Final = "/tmp"
CONTAINER_ENV: Final = "TRACECAR_CONTAINER"
DEFAULT_CONTAINER_ANNOTATION: Final = "kubectl.kubernetes.io/default-container"
HOST_PATHS: Final = (
    ("tracecar-modules", "/lib/modules"),
    ("tracecar-usr-src", "/usr/src"),
    ("tracecar-debugfs", "/sys/kernel/debug"),
)
# Env that makes JIT runtimes emit perf maps / frame pointers. "set" never overrides
# the pod's value; "append" adds the flag to a literal value (never to a valueFrom).
RUNTIME_ENV: Final[tuple[tuple[str, str, Literal["set", "append"]], ...]] = (
    # .NET reads its knobs as DOTNET_X (5+) or COMPlus_X (every version; 3.x reads only
    # this one): both spellings, each pair treated as one setting (DOTNET_ALIASES).
    # PerfMapEnabled names JIT'd methods in /tmp/perf-PID.map; EnableEventLog turns on
    # the runtime's LTTng events (docs/dotnet.md gives the cost of each).
    ("DOTNET_PerfMapEnabled", "1", "set"),
    ("COMPlus_PerfMapEnabled", "1", "set"),
    ("DOTNET_EnableEventLog", "1", "set"),
    ("COMPlus_EnableEventLog", "1", "set"),
    ("PYTHONPERFSUPPORT", "1", "set"),
    # --perf-basic-prof names JIT-compiled functions; --interpreted-frames-native-stack
    # gives each interpreted one a frame of its own in that map (else they all show as
    # InterpreterEntryTrampoline). Both are allowed in NODE_OPTIONS.
    ("NODE_OPTIONS", "--perf-basic-prof --interpreted-frames-native-stack", "append"),
    ("JAVA_TOOL_OPTIONS", "-XX:+PreserveFramePointer", "append"),
)

DOTNET_ALIASES: Final = {
    f"{prefix}{knob}": f"{other}{knob}"
    for knob in ("PerfMapEnabled", "EnableEventLog")
    for prefix, other in (("DOTNET_", "COMPlus_"), ("COMPlus_", "DOTNET_"))
}
"""A .NET knob the pod sets in one spelling is the pod's choice: the other is not added."""

Mode = Literal["native", "classic"]


class Status(TypedDict):
    """The ``tracecar.dev/status`` annotation (JSON): what was injected, where to reach it."""

    version: str
    container: str
    port: int
    mode: Mode
    image: str
    volumes: list[str]
    auth: AgentAuth
    """``token``: the agent's TRACECAR_AGENT_TOKEN env holds its bearer token (never here)."""
    sinks: list[str]
    """The stores the agent pushes to ("pyroscope", "s3"); empty: none."""
    continuous: bool
    service_name: str


@dataclass(frozen=True, kw_only=True)
class Injection:
    pod: JsonObject
    ops: list[PatchOp]
    warnings: tuple[str, ...]
    status: Status


@dataclass(frozen=True, kw_only=True)
class VolumeNames:
    data: str
    lttng: str
    tmp: str | None
    host: tuple[tuple[str, str], ...]
    """(volume name, host path) pairs, empty unless host paths were asked for."""
    sinks: str | None = None
    """The stores' credentials Secret, mounted in the agent only."""

    def all(self) -> list[str]:
        names = [self.data, self.lttng]
        if self.tmp:
            names.append(self.tmp)
        names.extend(name for name, _ in self.host)
        if self.sinks:
            names.append(self.sinks)
        return names


def _dicts(value: object) -> list[JsonObject]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def unique_name(wanted: str, taken: set[str]) -> str:
    """`wanted`, or `wanted-2`, `wanted-3`... whichever is free; the result is taken."""
    name, n = wanted, 1
    while name in taken:
        n += 1
        name = f"{wanted}-{n}"
    taken.add(name)
    return name


def _exec_probe(
    *, period_s: int, failure_threshold: int, command: tuple[str, ...] = HEALTHCHECK
) -> JsonObject:
    return {
        "exec": {"command": list(command)},
        "periodSeconds": period_s,
        # An exec probe pays a Python start-up: on a loaded node (seen on the cluster
        # stage at load average ~24) that alone passed 3 s, and the kubelet killed
        # healthy agents, losing their in-memory state. A wedged agent is still
        # restarted within about 30 s plus three timeouts.
        "timeoutSeconds": 10,
        "failureThreshold": failure_threshold,
    }


def render_agent(
    *,
    options: Options,
    port: int,
    volumes: VolumeNames,
    token: str | None,
    sink_env: list[JsonObject] | None = None,
) -> JsonObject:
    """The agent container. Its probes are exec probes: the agent listens on loopback
    only and the kubelet's httpGet/tcpSocket probes dial the pod IP. No readiness probe
    on purpose: a profiler must never take the app out of its Service's endpoints.
    `token` (None with ``auth: none``) goes into the agent's env, nowhere else."""
    mounts: list[JsonObject] = [
        {"name": volumes.data, "mountPath": DATA_DIR},
        {"name": volumes.lttng, "mountPath": LTTNG_DIR},
    ]
    if volumes.tmp:
        mounts.append({"name": volumes.tmp, "mountPath": TMP_DIR})
    mounts.extend(
        {"name": name, "mountPath": path, "readOnly": True} for name, path in volumes.host
    )
    if volumes.sinks:
        mounts.append({"name": volumes.sinks, "mountPath": SECRET_DIR, "readOnly": True})
    security: JsonObject = {
        # Root inside the container: perf, bpftrace and lttng-sessiond need it; explicit,
        # so a pod-level runAsNonRoot/runAsUser does not stop the agent from starting.
        "runAsUser": 0,
        "runAsNonRoot": False,
        "capabilities": {"add": list(CAPABILITIES)},
    }
    if options.privileged:
        security["privileged"] = True
    agent: JsonObject = {
        "name": AGENT_CONTAINER,
        "image": options.image,
        "imagePullPolicy": options.image_pull_policy,
        "command": list(AGENT_COMMAND),
        "env": [
            *agent_env(port=port),
            *(sink_env or []),
            {"name": TOKEN_ENV, "value": token}
            if token is not None
            else {"name": AUTH_ENV, "value": "none"},
        ],
        "resources": {
            "requests": {"cpu": options.cpu_request, "memory": options.memory_request},
            "limits": {"cpu": options.cpu_limit, "memory": options.memory_limit},
        },
        "securityContext": security,
        "volumeMounts": mounts,
        "livenessProbe": _exec_probe(period_s=10, failure_threshold=3),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if options.native_sidecar:
        # An init container that keeps running: up (with LTTng's session daemon) before
        # the app starts, which LTTng-UST agents need to register.
        agent["restartPolicy"] = "Always"
        # Held there by a postStart hook that returns when the agent serves: the kubelet
        # starts the next container once the hook has returned. A startupProbe holds it
        # too, but its result waits for the probe's next period and the status relist:
        # about a second more of the app's start (bench/README.md, footprint). Istio's
        # holdApplicationUntilProxyStarts is the same hook.
        agent["lifecycle"] = {"postStart": {"exec": {"command": list(STARTUP_CHECK)}}}
    return agent


def render_volumes(volumes: VolumeNames) -> list[JsonObject]:
    out: list[JsonObject] = [
        {"name": volumes.data, "emptyDir": {}},
        {"name": volumes.lttng, "emptyDir": {}},
    ]
    if volumes.tmp:
        out.append({"name": volumes.tmp, "emptyDir": {}})
    out.extend(
        {"name": name, "hostPath": {"path": path, "type": "Directory"}}
        for name, path in volumes.host
    )
    return out


def _env_index(env: list[object]) -> dict[str, int]:
    """Name -> index of the entry that wins (the last one with that name)."""
    return {e["name"]: i for i, e in enumerate(env) if isinstance(e, dict) and "name" in e}


def _mutate_app_container(
    b: PatchBuilder,
    container: JsonObject,
    path: str,
    *,
    options: Options,
    volumes: VolumeNames,
    warnings: list[str],
) -> None:
    name = str(container.get("name", ""))
    mount_paths = {
        str(m.get("mountPath", "")).rstrip("/") or "/"
        for m in _dicts(container.get("volumeMounts"))
    }
    wanted_mounts = [(volumes.lttng, LTTNG_DIR)]
    if volumes.tmp:
        wanted_mounts.append((volumes.tmp, TMP_DIR))
    for volume, mount_path in wanted_mounts:
        if mount_path in mount_paths:
            warnings.append(
                f"tracecar: container {name} already mounts {mount_path}; "
                "left as is (not shared with the agent)"
            )
            continue
        b.append(container, path, "volumeMounts", {"name": volume, "mountPath": mount_path})

    env_list = container.get("env")
    env: list[object] = env_list if isinstance(env_list, list) else []
    index = _env_index(env)
    if CONTAINER_ENV not in index:
        b.append(container, path, "env", {"name": CONTAINER_ENV, "value": name})
    if not options.runtime_symbols:
        return
    for var, value, how in RUNTIME_ENV:
        if var not in index and DOTNET_ALIASES.get(var) in index:
            continue  # e.g. DOTNET_PerfMapEnabled=0: the pod said no, in the other spelling
        if var not in index:
            b.append(container, path, "env", {"name": var, "value": value})
            continue
        entry = env[index[var]]
        assert isinstance(entry, dict)
        current = entry.get("value")
        if how == "set" or "valueFrom" in entry or not isinstance(current, str | None):
            continue  # the pod sets it: never overridden
        current = current or ""
        missing = [flag for flag in value.split() if flag not in current.split()]
        if not missing:
            continue
        b.set(entry, f"{path}/env/{index[var]}", "value", " ".join([current, *missing]).strip())


def plan_injection(
    pod: JsonObject,
    *,
    settings: Settings,
    copy: bool = True,
    new_token: TokenFactory = random_token,
    namespace: str = "",
    policy: NamespacePolicy = "default",
) -> Injection:
    """Inject the agent into `pod` (a copy of it unless ``copy=False``: then the caller
    hands over a pod it owns, e.g. freshly parsed, and saves the copy). `new_token`
    makes the agent's per-pod token (called once, unless the pod opted out).
    `namespace` (the request's) names the default service; `policy` is what the pod's
    namespace asks for (see :data:`webhook.options.NamespacePolicy`).

    Assumes :func:`webhook.decision.inject_required` said yes (spec.containers exists).
    """
    doc: JsonObject = orjson.loads(orjson.dumps(pod)) if copy else pod
    metadata = doc.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    parsed = parse_options(
        annotations if isinstance(annotations, dict) else None, settings=settings, policy=policy
    )
    options = parsed.options
    warnings = list(parsed.warnings)
    spec: JsonObject = doc["spec"]
    containers = spec["containers"]
    init_containers = spec.get("initContainers")
    inits: list[object] = init_containers if isinstance(init_containers, list) else []

    taken_volumes = {str(v.get("name")) for v in _dicts(spec.get("volumes"))}
    volumes = VolumeNames(
        data=unique_name("tracecar-data", taken_volumes),
        lttng=unique_name("tracecar-lttng", taken_volumes),
        tmp=unique_name("tracecar-tmp", taken_volumes) if options.share_tmp else None,
        host=tuple((unique_name(n, taken_volumes), p) for n, p in HOST_PATHS)
        if options.host_paths
        else (),
    )
    sink_plan: SinkPlan = plan_sinks(
        doc,
        namespace=namespace,
        options=options,
        settings=settings,
        volume_name=unique_name("tracecar-sinks", set(taken_volumes)),
    )
    warnings.extend(sink_plan.warnings)
    if sink_plan.volume is not None:
        taken_volumes.add(sink_plan.volume["name"])
        volumes = VolumeNames(
            data=volumes.data,
            lttng=volumes.lttng,
            tmp=volumes.tmp,
            host=volumes.host,
            sinks=sink_plan.volume["name"],
        )

    ports = declared_ports(_dicts(containers) + _dicts(inits))
    port = choose_port(options.port, ports)
    if port != options.port:
        warnings.append(
            f"tracecar: port {options.port} is declared by container {ports[options.port]}; "
            f"the agent listens on {port} (see {STATUS_ANNOTATION})"
        )

    mode: Mode = "native" if options.native_sidecar else "classic"
    if mode == "classic" and spec.get("restartPolicy") in ("Never", "OnFailure"):
        # A regular container that never exits keeps a run-to-completion pod (a Job's)
        # running forever; a native sidecar is stopped when the app containers end.
        warnings.append(
            f"tracecar: restartPolicy {spec['restartPolicy']} with the agent as a regular "
            "container (native-sidecar false): the agent never exits, so this pod never "
            'completes; use tracecar.dev/native-sidecar: "true" (Kubernetes 1.29+)'
        )
    status: Status = {
        "version": __version__,
        "container": AGENT_CONTAINER,
        "port": port,
        "mode": mode,
        "image": options.image,
        "volumes": volumes.all(),
        "auth": options.auth,
        "sinks": list(sink_plan.sinks),
        "continuous": options.continuous and options.push,
        "service_name": next(
            e["value"] for e in sink_plan.env if e["name"] == "TRACECAR_AGENT_SERVICE_NAME"
        ),
    }

    b = PatchBuilder()
    if not isinstance(metadata, dict):
        metadata = {}
        b.set(doc, "", "metadata", {})
        doc["metadata"] = metadata
    status_json = orjson.dumps(status, option=orjson.OPT_SORT_KEYS).decode()
    b.set_in_map(metadata, "/metadata", "annotations", STATUS_ANNOTATION, status_json)
    if mode == "classic":
        current_annotations = metadata["annotations"]
        first = containers[0] if isinstance(containers[0], dict) else {}
        if DEFAULT_CONTAINER_ANNOTATION not in current_annotations and "name" in first:
            # kubectl logs/exec keep defaulting to the app, not to the added agent.
            b.set(
                current_annotations,
                "/metadata/annotations",
                DEFAULT_CONTAINER_ANNOTATION,
                first["name"],
            )

    if spec.get("hostPID") is True:
        warnings.append(
            "tracecar: the pod uses hostPID; shareProcessNamespace left unset "
            "(the agent sees the node's processes)"
        )
    elif spec.get("shareProcessNamespace") is not True:
        b.set(spec, "/spec", "shareProcessNamespace", True)

    grace = flush_grace(spec, sinks=sink_plan.sinks, settings=settings)
    if grace is not None:
        warnings.append(
            f"tracecar: terminationGracePeriodSeconds raised to {grace} so the agent can "
            "send what it holds to the stores after SIGTERM (docs/stores.md)"
        )
        b.set(spec, "/spec", "terminationGracePeriodSeconds", grace)

    for volume in render_volumes(volumes):
        b.append(spec, "/spec", "volumes", volume)
    if sink_plan.volume is not None:
        b.append(spec, "/spec", "volumes", sink_plan.volume)

    for i, c in enumerate(containers):
        if isinstance(c, dict):
            _mutate_app_container(
                b, c, f"/spec/containers/{i}", options=options, volumes=volumes, warnings=warnings
            )
    for i, c in enumerate(inits):
        # Other native sidecars are long-running apps too (e.g. a proxy).
        if isinstance(c, dict) and c.get("restartPolicy") == "Always":
            _mutate_app_container(
                b,
                c,
                f"/spec/initContainers/{i}",
                options=options,
                volumes=volumes,
                warnings=warnings,
            )

    token = new_token() if options.auth == "token" else None
    if options.auth == "none":
        warnings.append(
            "tracecar: tracecar.dev/auth none: the agent serves every container of this pod "
            "without a token (see docs/security.md)"
        )
    agent = render_agent(
        options=options, port=port, volumes=volumes, token=token, sink_env=sink_plan.env
    )
    if options.native_sidecar:
        b.prepend(spec, "/spec", "initContainers", agent)
    else:
        b.append(spec, "/spec", "containers", agent)
    return Injection(pod=doc, ops=b.ops, warnings=tuple(warnings), status=status)
