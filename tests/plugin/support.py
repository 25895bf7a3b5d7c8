"""Fakes of the plugin's own seams, shared by the plugin's tests: the Kube API answering
from dicts (no kubeconfig, nothing leaves the process), pods as ``kubectl get -o json``
prints them, and running one command line as ``main`` does, minus the error printing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from kubectl_tracecar import _cli, _pods
from kubectl_tracecar._kube import Connection, JsonObject, Kube, selector_string
from kubectl_tracecar.commands import _reach
from kubectl_tracecar.errors import NotFound


class FakeKube(Kube):
    """The Kube seam answering from a list of pods and Deployment selectors: no
    kubeconfig is loaded (``Kube.__init__`` is not run), nothing leaves the process."""

    def __init__(
        self,
        *,
        pods: list[JsonObject] | None = None,
        deployments: dict[str, JsonObject] | None = None,
        version: tuple[int, int] = (1, 30),
    ) -> None:
        self.conn = Connection(kubeconfig=None, context=None, namespace="shop")
        self._items = list(pods or [])
        self._deployments = deployments or {}
        self._version = version
        self.selectors: list[str] = []
        self.added: list[JsonObject] = []

    def pod(self, name: str) -> JsonObject:
        for p in self._items:
            if p["metadata"]["name"] == name:
                return p
        raise NotFound(f"pod shop/{name}: not found")

    def pods(self, selector: str) -> list[JsonObject]:
        self.selectors.append(selector)
        wanted = dict(term.split("=", 1) for term in selector.split(","))
        return [
            p
            for p in self._items
            if all(p["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
        ]

    def deployment_selector(self, name: str) -> str:
        if name not in self._deployments:
            raise NotFound(f"deployment shop/{name}: not found")
        return selector_string(self._deployments[name])

    def deployment_env(self, namespace: str, name: str, container: str) -> dict[str, str]:
        raise NotFound(f"deployment {namespace}/{name}: not found")  # no webhook installed

    def server_version(self) -> tuple[int, int]:
        return self._version

    def add_ephemeral_container(self, pod: str, container: JsonObject) -> JsonObject:
        self.added.append(container)
        return {}


def pod(
    name: str,
    *,
    phase: str = "Running",
    labels: dict[str, str] | None = None,
    terminating: bool = False,
    agent: bool = False,
) -> JsonObject:
    meta: JsonObject = {"name": name, "labels": {"app": "web"} if labels is None else labels}
    if terminating:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    spec: JsonObject = {"containers": [{"name": "app"}]}
    status: JsonObject = {"phase": phase}
    if agent:
        spec["initContainers"] = [{"name": "tracecar-agent"}]
        status["initContainerStatuses"] = [{"name": "tracecar-agent", "state": {"running": {}}}]
    return {"metadata": meta, "spec": spec, "status": status}


def run(kube: Kube, argv: list[str]) -> int:
    """One command line against ``kube``: completed (a bad one raises UsageError), run."""
    inv = _cli.complete(argv)
    return inv.command.run(kube, inv.options)


def options(argv: list[str]) -> Any:
    """The options one command line completes to."""
    return _cli.complete(argv).options


def reach_with(monkeypatch: pytest.MonkeyPatch, agent: object) -> None:
    """Every pod the plugin reaches answers through ``agent`` (a fake of the agent's
    HTTP client), with the pod's own agent container as found."""

    @contextmanager
    def reach(kube: Kube, pod: JsonObject, **kw: object) -> Iterator[tuple[object, _pods.Agent]]:
        yield agent, _pods.find_agent(pod)

    monkeypatch.setattr(_reach, "reach", reach)
