"""Reading a pod as the plugin needs it, purely from its JSON: where its tracecar agent
is (injected by the webhook, attached as an ephemeral container, or none), on which
port, with which token, and which container an attach should target.

Nothing here talks to the cluster; the tests feed it pods as ``kubectl get -o json``
prints them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from kubectl_tracecar.errors import NotFound, Unsupported
from tracecar_contract import AGENT_NAME, DEFAULT_PORT, PORT_ENV, TOKEN_ENV

DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"

JsonObject = dict[str, Any]
How = Literal["injected", "attached", "none"]


@dataclass(frozen=True, slots=True)
class Agent:
    """The agent of a pod, as its spec and status describe it."""

    how: How
    container: str | None = None
    port: int = DEFAULT_PORT
    token: str | None = None
    running: bool = False
    state: str = "absent"  # running / waiting: REASON / terminated: REASON / absent
    image: str | None = None


def literal_env(container: JsonObject) -> dict[str, str]:
    """A container's env entries that have a literal value (valueFrom ones left out)."""
    return {
        e["name"]: e["value"]
        for e in container.get("env") or []
        if isinstance(e, dict) and isinstance(e.get("value"), str)
    }


def _state(statuses: list[JsonObject], name: str) -> tuple[bool, str]:
    for s in statuses:
        if s.get("name") != name:
            continue
        st = s.get("state") or {}
        if "running" in st:
            return True, "running"
        if "waiting" in st:
            return False, f"waiting: {st['waiting'].get('reason', '?')}"
        if "terminated" in st:
            return False, f"terminated: {st['terminated'].get('reason', '?')}"
    return False, "not started"


def _agent_from(container: JsonObject, how: How, statuses: list[JsonObject]) -> Agent:
    env = literal_env(container)
    port = env.get(PORT_ENV, "")
    running, state = _state(statuses, container["name"])
    return Agent(
        how=how,
        container=container["name"],
        port=int(port) if port.isdigit() else DEFAULT_PORT,
        token=env.get(TOKEN_ENV),
        running=running,
        state=state,
        image=container.get("image"),
    )


def find_agent(pod: JsonObject) -> Agent:
    """The pod's agent: an injected one first, else the newest running attached one,
    else the newest attached one (stopped: its idle timeout ended it), else none."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    for key, skey in (
        ("initContainers", "initContainerStatuses"),
        ("containers", "containerStatuses"),
    ):
        for c in spec.get(key) or []:
            if c.get("name") == AGENT_NAME:
                return _agent_from(c, "injected", status.get(skey) or [])
    attached = [
        _agent_from(c, "attached", status.get("ephemeralContainerStatuses") or [])
        for c in spec.get("ephemeralContainers") or []
        if str(c.get("name", "")).startswith(AGENT_NAME)
    ]
    for a in reversed(attached):
        if a.running:
            return a
    return attached[-1] if attached else Agent(how="none")


def app_containers(pod: JsonObject) -> list[str]:
    return [
        c["name"]
        for c in (pod.get("spec") or {}).get("containers") or []
        if c.get("name") != AGENT_NAME
    ]


def target_container(pod: JsonObject, wanted: str | None) -> str:
    """The app container an attach joins: ``-c``, else the pod's default-container
    annotation, else its first container (what ``kubectl exec`` picks)."""
    names = app_containers(pod)
    meta = pod.get("metadata") or {}
    if wanted is not None:
        if wanted not in names:
            raise NotFound(
                f"pod {meta.get('name')} has no container {wanted!r}",
                hint=f"its containers: {', '.join(names) or 'none'}",
            )
        return wanted
    default = (meta.get("annotations") or {}).get(DEFAULT_CONTAINER_ANNOTATION)
    if default in names:
        return str(default)
    if not names:
        raise NotFound(f"pod {meta.get('name')} has no app container to attach to")
    return names[0]


def require_running(pod: JsonObject) -> None:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    phase = status.get("phase", "Unknown")
    if meta.get("deletionTimestamp"):
        raise Unsupported(f"pod {meta.get('name')} is being deleted")
    if phase != "Running":
        raise Unsupported(
            f"pod {meta.get('name')} is {phase}, not Running: the agent can only join "
            "a running pod",
        )


def used_names(pod: JsonObject) -> set[str]:
    spec = pod.get("spec") or {}
    return {
        str(c.get("name"))
        for key in ("initContainers", "containers", "ephemeralContainers")
        for c in spec.get(key) or []
    }


def restart_counts(pod: JsonObject) -> dict[str, int]:
    status = pod.get("status") or {}
    return {
        s["name"]: int(s.get("restartCount", 0))
        for key in ("initContainerStatuses", "containerStatuses")
        for s in status.get(key) or []
    }
