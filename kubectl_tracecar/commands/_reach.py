"""From a target to a pod's agent: the pods a selection names, a client of a pod's
running agent through a port-forward of our own (:func:`reach`), the pod's processes
as the agent sees them, a dump job waited for (:func:`wait_dump`), and adding an agent
to a running pod (:func:`attach_agent`, for ``attach`` and for ``--attach``).

httpx (the agent's client) and the port-forward are imported when a command first
reaches an agent, so ``--help`` loads neither. Tests replace :func:`reach` (or
:func:`connect`, the port-forward + client alone) with fakes of our own seam.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubectl_tracecar import _attach, _pods
from kubectl_tracecar._kube import JsonObject, Kube
from kubectl_tracecar._targets import Target
from kubectl_tracecar.commands._base import Pods, say
from kubectl_tracecar.errors import NoAgent, NotFound, PluginError, Unsupported, UsageError
from tracecar_contract import DEFAULT_IMAGE

if TYPE_CHECKING:
    from kubectl_tracecar._agent import AgentClient

WEBHOOK_NAMESPACE = "tracecar-system"
WEBHOOK_DEPLOYMENT = "tracecar-webhook"


def name_of(pod: JsonObject) -> str:
    return str(pod["metadata"]["name"])


# --- targets -------------------------------------------------------------------------


def resolve(kube: Kube, pods: Pods) -> list[JsonObject]:
    return pods_of(kube, pods.target, all_pods=pods.all_pods)


def pods_of(kube: Kube, target: Target, *, all_pods: bool) -> list[JsonObject]:
    if target.kind == "pod":
        return [kube.pod(target.name)]
    selector = target.name
    if target.kind == "deployment":
        selector = kube.deployment_selector(target.name)
    pods = [p for p in kube.pods(selector) if not p["metadata"].get("deletionTimestamp")]
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    if not running:
        raise NotFound(f"no running pod matches {target} in namespace {kube.namespace}")
    running.sort(key=lambda p: p["metadata"]["name"])
    if target.kind == "deployment" and not all_pods:
        return running[:1]  # what `kubectl exec deploy/NAME` does: one of its pods
    return running


def one_pod(kube: Kube, pods: Pods, what: str) -> JsonObject:
    found = resolve(kube, pods)
    if len(found) != 1:
        raise UsageError(
            f"{what} one pod at a time: name a pod (or deploy/NAME for one of its pods)"
        )
    return found[0]


# --- reaching the agent ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AutoAttach:
    """``--attach`` (profile, stack, probe, trace): when the pod has no agent, add one
    first, joining ``container`` (their ``-c``) or the pod's default container."""

    enabled: bool
    container: str | None = None


def _wants_fresh_agent(agent: _pods.Agent) -> bool:
    # None at all, or an attached one that ended itself after its idle time; an injected
    # agent that is not running (or an attached one still starting) is not replaced.
    return agent.how == "none" or (agent.how == "attached" and agent.state.startswith("term"))


def _no_agent(pod: JsonObject, agent: _pods.Agent, auto: AutoAttach | None) -> NoAgent:
    name = name_of(pod)
    flag = ", or pass --attach" if auto is not None else ""
    if agent.how == "none":
        return NoAgent(
            f"pod {name} has no tracecar agent",
            hint=f"attach one with `kubectl tracecar attach {name}`{flag} (no restart), "
            "or label the pod template profiling=enabled",
        )
    hint = None
    if agent.how == "attached":
        hint = (
            "an attached agent stops after its idle time: "
            f"`kubectl tracecar attach {name}` adds a fresh one{flag}"
        )
    return NoAgent(f"the agent of pod {name} is not running ({agent.state})", hint=hint)


@contextmanager
def connect(kube: Kube, pod: JsonObject, agent: _pods.Agent) -> Iterator[AgentClient]:
    """A client of the agent, through ``kubectl port-forward`` to a free local port."""
    from kubectl_tracecar._agent import AgentClient
    from kubectl_tracecar._forward import port_forward

    with (
        port_forward(kube.conn, name_of(pod), agent.port) as url,
        AgentClient(url, token=agent.token) as client,
    ):
        yield client


@contextmanager
def reach(
    kube: Kube, pod: JsonObject, *, auto: AutoAttach | None = None
) -> Iterator[tuple[AgentClient, _pods.Agent]]:
    """A client of the pod's running agent. ``auto``: the command has ``--attach``
    (given or not: the error then says it could have been)."""
    agent = _pods.find_agent(pod)
    if _wants_fresh_agent(agent) and auto is not None and auto.enabled:
        say(f"pod/{name_of(pod)} has no running agent: attaching one (--attach)")
        pod, _ = attach_agent(kube, pod, AttachRequest(container=auto.container))
        agent = _pods.find_agent(pod)
    if agent.how == "none" or not agent.running:
        raise _no_agent(pod, agent, auto)
    with connect(kube, pod, agent) as client:
        yield client, agent


def wait_healthy(kube: Kube, pod: JsonObject, *, timeout_s: float) -> None:
    """The agent answers /healthz. A container that runs but does not listen yet makes
    kubectl port-forward give up on its first refused connection, so each try takes a
    fresh forward."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with reach(kube, pod) as (client, _):
                client.get_json("/healthz", "agent health")
            return
        except PluginError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


# --- jobs ----------------------------------------------------------------------------

POLL_S = 0.5


def wait_dump(
    client: AgentClient, job: dict[str, Any], *, poll_s: float | None = None
) -> dict[str, Any]:
    """Poll a dump job (``dump``; a heap dump is one too) until it is written, showing
    its progress on stderr."""
    while job["state"] not in ("succeeded", "failed", "cancelled"):
        est = job.get("result", {}).get("estimate", {}).get("bytes", 0)
        written = job.get("result", {}).get("written_bytes", 0)
        say(
            f"writing: {written / (1 << 20):.0f} MiB of at most {est / (1 << 20):.0f} MiB "
            f"({100 * job.get('progress', 0):.0f}%)"
        )
        time.sleep(POLL_S if poll_s is None else poll_s)
        job = client.get_json(f"/dumps/{job['id']}", "the dump's state")
    return job


# --- processes -----------------------------------------------------------------------


def container_names(pod: JsonObject) -> dict[str, str]:
    """Container id -> name from the pod's status, for agents that only see ids."""
    out: dict[str, str] = {}
    status = pod.get("status") or {}
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for s in status.get(key) or []:
            cid = str(s.get("containerID") or "").partition("://")[2]
            if cid:
                out[cid] = s["name"]
    return out


def processes(client: AgentClient, pod: JsonObject) -> list[dict[str, Any]]:
    procs: list[dict[str, Any]] = client.get_json("/processes", "listing processes")
    names = container_names(pod)
    for p in procs:
        cid = p.get("container_id")
        if cid in names and p.get("container") == str(cid)[:12]:
            p["container"] = names[cid]
    return procs


def pids_named(client: AgentClient, pod: JsonObject, name: str, container: str | None) -> list[int]:
    procs = processes(client, pod)
    found = [
        int(p["pid"])
        for p in procs
        if (container is None or p["container"] == container)
        and (p["comm"] == name or (p["cmdline"] and Path(p["cmdline"][0]).name == name))
    ]
    if not found:
        where = f"container {container!r}" if container else f"pod {name_of(pod)}"
        names = sorted({str(p["comm"]) for p in procs})
        raise NotFound(f"no process named {name!r} in {where}", hint=f"there: {', '.join(names)}")
    return found


def main_process(client: AgentClient, pod: JsonObject, container: str) -> int:
    procs = [p for p in processes(client, pod) if p["container"] == container]
    if not procs:
        raise NotFound(f"no process of container {container!r} is visible to the agent")
    roots = [p for p in procs if p["ppid"] not in {q["pid"] for q in procs}]
    if len(roots) == 1:
        return int(roots[0]["pid"])
    listed = ", ".join(f"{p['pid']} ({p['comm']})" for p in procs[:10])
    raise UsageError(
        f"container {container!r} has several processes ({listed}): pick one with --pid"
    )


# --- adding an agent -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttachRequest:
    """How to add an agent (``attach``'s flags; ``--attach`` takes the defaults)."""

    container: str | None = None
    image: str | None = None
    privileged: bool = False
    idle_s: float = _attach.DEFAULT_IDLE_S
    timeout_s: float = 120.0


def _suffix() -> str:
    import secrets
    import string

    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(5))


def agent_image(kube: Kube, image: str | None) -> str:
    """``--image``, else the image the installed webhook injects, else its default."""
    if image:
        return image
    try:
        env = kube.deployment_env(WEBHOOK_NAMESPACE, WEBHOOK_DEPLOYMENT, "webhook")
    except PluginError:
        return DEFAULT_IMAGE
    return env.get("TRACECAR_WEBHOOK_AGENT_IMAGE", DEFAULT_IMAGE)


def attach_agent(kube: Kube, pod: JsonObject, req: AttachRequest) -> tuple[JsonObject, str]:
    """Add an ephemeral agent to the running pod and wait until it answers: the pod as
    it is then (its new agent running) and the agent container's name."""
    name = name_of(pod)
    _pods.require_running(pod)
    container = _pods.target_container(pod, req.container)
    kube.require_ephemeral_containers()
    import secrets  # (hashlib, random...: not for --help)

    spec = _attach.render(
        pod,
        options=_attach.AttachOptions(
            image=agent_image(kube, req.image),
            target=container,
            token=secrets.token_urlsafe(32),
            suffix=_suffix(),
            privileged=req.privileged,
            idle_exit_s=req.idle_s,
            container_names=container_names(pod),
        ),
    )
    say(f"adding ephemeral container {spec['name']} to pod/{name} (target {container})")
    kube.add_ephemeral_container(name, spec)
    deadline = time.monotonic() + req.timeout_s
    agent = _pods.find_agent(pod)
    while time.monotonic() < deadline:
        pod = kube.pod(name)
        agent = _pods.find_agent(pod)
        if agent.container == spec["name"] and agent.running:
            break
        if agent.container == spec["name"] and agent.state.startswith("terminated"):
            raise PluginError(
                f"the attached agent {spec['name']} exited at once ({agent.state})",
                hint=f"see: kubectl logs -n {kube.namespace} {name} -c {spec['name']}",
            )
        time.sleep(1.0)
    else:
        raise Unsupported(
            f"the attached agent did not start within {req.timeout_s:g}s ({agent.state})",
            hint=f"see: kubectl describe pod -n {kube.namespace} {name}",
        )
    wait_healthy(kube, pod, timeout_s=60.0)
    return pod, str(spec["name"])
