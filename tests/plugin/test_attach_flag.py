"""``--attach`` (profile, stack, probe, trace): from nothing to a flame graph in one
command, as kubectl-prof users have it. Over fakes of our own seams: a Kube whose pod
gains a running ephemeral agent when one is added, and ``connect`` (the port-forward
+ client) answering as the agent would; the real ``reach`` and ``attach_agent`` run."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from kubectl_tracecar import _pods
from kubectl_tracecar._kube import JsonObject, Kube
from kubectl_tracecar.commands import _reach
from kubectl_tracecar.errors import NO_AGENT, OK, NoAgent
from tests.plugin.support import FakeKube, run
from tests.plugin.support import pod as make_pod


class AttachingKube(FakeKube):
    """An ephemeral container added to a pod shows up in its spec, running."""

    def add_ephemeral_container(self, pod: str, container: JsonObject) -> JsonObject:
        super().add_ephemeral_container(pod, container)
        p = self.pod(pod)
        p["spec"].setdefault("ephemeralContainers", []).append(container)
        status = {"name": container["name"], "state": {"running": {}}}
        p["status"].setdefault("ephemeralContainerStatuses", []).append(status)
        return {}


class ProfilingAgent:
    """The agent's health and profile endpoints."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def get_json(self, path: str, what: str, **kw: Any) -> dict[str, Any]:
        self.calls.append(f"GET {path}")
        assert path == "/healthz"
        return {"status": "ok"}

    def post_json(self, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        self.calls.append(f"POST {path}")
        links = {"folded": "/profiles/p1/folded", "flamegraph": "/profiles/p1/flamegraph.svg"}
        return {"id": "p1", "state": "succeeded", "links": links, "metadata": {"samples": 3}}

    def download(self, path: str, what: str) -> bytes:
        self.calls.append(f"GET {path}")
        return b"main;hot 3\n" if path.endswith("folded") else b"<svg/>"


@pytest.fixture
def agent(monkeypatch: pytest.MonkeyPatch) -> ProfilingAgent:
    fake = ProfilingAgent()

    @contextmanager
    def connect(kube: Kube, pod: JsonObject, found: _pods.Agent) -> Iterator[ProfilingAgent]:
        assert found.running and found.how in ("injected", "attached")
        yield fake

    monkeypatch.setattr(_reach, "connect", connect)
    return fake


def test_profile_attach_adds_an_agent_then_profiles(
    agent: ProfilingAgent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kube = AttachingKube(pods=[make_pod("shop")])
    out = tmp_path / "flame.svg"
    assert run(kube, ["profile", "shop", "--attach", "-d", "1s", "-o", str(out)]) == OK
    assert out.read_bytes() == b"<svg/>"
    [added] = kube.added
    assert added["name"].startswith("tracecar-agent-") and added["targetContainerName"] == "app"
    assert agent.calls[0] == "GET /healthz"  # waited for the new agent, then profiled
    assert "POST /profiles" in agent.calls
    err = capsys.readouterr().err
    assert "has no running agent: attaching one (--attach)" in err


def test_attach_joins_the_container_named_with_c(agent: ProfilingAgent, tmp_path: Path) -> None:
    shop = make_pod("shop")
    shop["spec"]["containers"].append({"name": "side"})
    kube = AttachingKube(pods=[shop])
    argv = ["profile", "shop", "--attach", "-c", "side", "-d", "1s", "-o", str(tmp_path / "x.svg")]
    assert run(kube, argv) == OK
    assert kube.added[0]["targetContainerName"] == "side"


def test_a_running_agent_is_used_and_nothing_is_added(
    agent: ProfilingAgent, tmp_path: Path
) -> None:
    kube = AttachingKube(pods=[make_pod("shop", agent=True)])
    assert (
        run(kube, ["profile", "shop", "--attach", "-d", "1s", "-o", str(tmp_path / "a.svg")]) == 0
    )
    assert kube.added == []


def test_an_attached_agent_that_ended_is_replaced(agent: ProfilingAgent, tmp_path: Path) -> None:
    shop = make_pod("shop")
    shop["spec"]["ephemeralContainers"] = [{"name": "tracecar-agent-old00"}]
    ended = {"name": "tracecar-agent-old00", "state": {"terminated": {"reason": "Completed"}}}
    shop["status"]["ephemeralContainerStatuses"] = [ended]
    kube = AttachingKube(pods=[shop])
    assert (
        run(kube, ["profile", "shop", "--attach", "-d", "1s", "-o", str(tmp_path / "a.svg")]) == 0
    )
    assert len(kube.added) == 1 and kube.added[0]["name"] != "tracecar-agent-old00"


@pytest.mark.parametrize(
    "argv",
    [
        ["profile", "shop", "-d", "1s"],
        ["stack", "shop"],
        ["probe", "shop", "--function", "f"],
        ["trace", "shop", "--python", "app*"],
    ],
)
def test_without_attach_the_error_says_how(argv: list[str], agent: ProfilingAgent) -> None:
    kube = AttachingKube(pods=[make_pod("shop")])
    with pytest.raises(NoAgent) as e:
        run(kube, argv)
    assert e.value.exit_code == NO_AGENT
    assert e.value.message == "pod shop has no tracecar agent"
    assert e.value.hint is not None
    assert "attach one with `kubectl tracecar attach shop`, or pass --attach" in e.value.hint
    assert kube.added == [] and agent.calls == []


def test_commands_without_attach_do_not_offer_it(agent: ProfilingAgent) -> None:
    kube = AttachingKube(pods=[make_pod("shop")])
    with pytest.raises(NoAgent) as e:
        run(kube, ["ps", "shop"])
    assert e.value.hint and "attach one with `kubectl tracecar attach shop`" in e.value.hint
    assert "--attach" not in e.value.hint


def test_main_prints_the_hint_and_exits_5(
    agent: ProfilingAgent, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As a new user meets it: one error line, one hint line, exit code 5."""
    from kubectl_tracecar import __main__

    kube = AttachingKube(pods=[make_pod("shop")])
    monkeypatch.setattr(__main__, "Kube", lambda **kw: copy.copy(kube))
    assert __main__.main(["profile", "shop"]) == NO_AGENT
    err = capsys.readouterr().err.splitlines()[-2:]
    assert err[0] == "error: pod shop has no tracecar agent"
    assert err[1].startswith(
        "hint: attach one with `kubectl tracecar attach shop`, or pass --attach"
    )


def test_the_attach_command_shares_the_mechanics(
    agent: ProfilingAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    kube = AttachingKube(pods=[make_pod("shop")])
    assert run(kube, ["attach", "shop", "--idle-timeout", "5m", "-o", "json"]) == OK
    [added] = kube.added
    out = json.loads(capsys.readouterr().out)
    assert out == {"pod": "shop", "agent": "attached", "container": added["name"], "added": True}
    env = {e["name"]: e.get("value") for e in added["env"]}
    assert env["TRACECAR_AGENT_IDLE_EXIT_S"] == "300"
    assert run(kube, ["attach", "shop", "-o", "json"]) == OK  # running now: nothing added
    assert json.loads(capsys.readouterr().out)["added"] is False and len(kube.added) == 1
