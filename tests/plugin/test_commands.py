"""The commands over fakes of our own seams, no cluster: target resolution
(``pods_of``) and the "cluster too old" path through a :class:`Kube` whose API calls
answer from dicts, and a many-pod profile where one pod fails, with the agent reached
through a fake of ``reach`` (our port-forward + client seam; kubectl is not faked)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from kubectl_tracecar import _pods
from kubectl_tracecar._kube import JsonObject, Kube
from kubectl_tracecar._targets import Target
from kubectl_tracecar.commands import _reach
from kubectl_tracecar.commands._reach import pods_of
from kubectl_tracecar.errors import FAILED, NotFound, Unsupported
from tests.plugin.support import FakeKube, run
from tests.plugin.support import pod as _pod
from tracecar_formats.collapse import format_folded, parse_folded

WEB = {"web": {"matchLabels": {"app": "web"}}}
MIXED = [
    _pod("web-c"),
    _pod("web-a"),
    _pod("web-b"),
    _pod("web-pending", phase="Pending"),
    _pod("web-done", phase="Succeeded"),
    _pod("web-going", terminating=True),
    _pod("db-1", labels={"app": "db"}),
]


def _names(pods: list[JsonObject]) -> list[str]:
    return [p["metadata"]["name"] for p in pods]


def test_a_deployment_is_one_of_its_running_pods_unless_all_pods() -> None:
    kube = FakeKube(pods=MIXED, deployments=WEB)
    assert _names(pods_of(kube, Target("deployment", "web"), all_pods=False)) == ["web-a"]
    assert _names(pods_of(kube, Target("deployment", "web"), all_pods=True)) == [
        "web-a",
        "web-b",
        "web-c",
    ]
    assert kube.selectors == ["app=web", "app=web"]  # through the Deployment's selector


def test_a_selector_is_every_running_pod_not_terminating() -> None:
    kube = FakeKube(pods=MIXED)
    pods = pods_of(kube, Target("selector", "app=web"), all_pods=False)
    assert _names(pods) == ["web-a", "web-b", "web-c"]  # sorted; pending, done, going left out
    assert _names(pods_of(kube, Target("selector", "app=db"), all_pods=False)) == ["db-1"]


def test_a_pod_is_that_pod() -> None:
    kube = FakeKube(pods=MIXED)
    assert _names(pods_of(kube, Target("pod", "web-b"), all_pods=False)) == ["web-b"]
    with pytest.raises(NotFound, match="pod shop/nope"):
        pods_of(kube, Target("pod", "nope"), all_pods=False)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (Target("selector", "app=gone"), "no running pod matches -l app=gone in namespace shop"),
        (Target("deployment", "idle"), "no running pod matches deployment/idle in namespace shop"),
        (Target("deployment", "nope"), "deployment shop/nope: not found"),
    ],
)
def test_nothing_running_matches(target: Target, message: str) -> None:
    only_stopped = [
        _pod("idle-1", labels={"app": "idle"}, phase="Pending"),
        _pod("idle-2", labels={"app": "idle"}, terminating=True),
    ]
    kube = FakeKube(pods=only_stopped, deployments={"idle": {"matchLabels": {"app": "idle"}}})
    with pytest.raises(NotFound, match=message):
        pods_of(kube, target, all_pods=True)


@pytest.mark.parametrize("version", [(1, 24), (1, 18), (0, 0)])
def test_a_cluster_older_than_1_25_cannot_attach(version: tuple[int, int]) -> None:
    kube = FakeKube(pods=[_pod("web-a")], version=version)
    with pytest.raises(Unsupported, match=f"Kubernetes {version[0]}.{version[1]}") as e:
        kube.require_ephemeral_containers()
    assert e.value.exit_code == 6
    assert e.value.hint and "profiling=enabled" in e.value.hint
    with pytest.raises(Unsupported):
        run(kube, ["attach", "web-a"])
    assert kube.added == []  # refused before anything was added


@pytest.mark.parametrize("version", [(1, 25), (1, 31), (2, 0)])
def test_a_cluster_from_1_25_can(version: tuple[int, int]) -> None:
    FakeKube(version=version).require_ephemeral_containers()


class FakeAgent:
    """The part of AgentClient a profile uses, answering as the agent would."""

    def __init__(self, pod: str, folded: str | None) -> None:
        self.pod, self.folded = pod, folded

    def post_json(self, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        assert path == "/profiles" and body == {"duration_s": 1.0}
        if self.folded is None:
            return {"id": "p1", "state": "failed", "error": "perf exited 255"}
        links = {"folded": "/profiles/p1/folded"}
        return {"id": "p1", "state": "succeeded", "links": links, "metadata": {"samples": 7}}

    def download(self, path: str, what: str) -> bytes:
        assert path == "/profiles/p1/folded" and self.folded is not None
        return self.folded.encode()


FOLDED = {"web-a": "main;a 5\nmain;x 2\n", "web-c": "main;c 3\nmain;x 4\n"}


def test_many_pods_one_failing_keeps_the_others_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # web-a and web-c profile; web-b has no agent (the real reach refuses it, before
    # any port-forward); web-d's agent answers that its profile failed.
    pods = [_pod("web-a", agent=True), _pod("web-b"), _pod("web-c", agent=True)]
    pods.append(_pod("web-d", agent=True))
    real_reach = _reach.reach

    @contextmanager
    def reach(kube: Kube, pod: JsonObject, **kw: object) -> Iterator[tuple[FakeAgent, _pods.Agent]]:
        if _pods.find_agent(pod).how == "none":
            with real_reach(kube, pod):
                pytest.fail("reached a pod without an agent")
        name = pod["metadata"]["name"]
        yield FakeAgent(name, FOLDED.get(name)), _pods.find_agent(pod)

    monkeypatch.setattr(_reach, "reach", reach)
    out = tmp_path / "web.folded"
    argv = ["profile", "-l", "app=web", "-d", "1s", "-o", str(out)]
    assert run(FakeKube(pods=pods), argv) == FAILED

    for name, text in FOLDED.items():
        assert (tmp_path / f"web.{name}.folded").read_text() == text
    assert not (tmp_path / "web.web-b.folded").exists()
    assert not (tmp_path / "web.web-d.folded").exists()
    merged = {"main;a": 5, "main;c": 3, "main;x": 6}
    assert out.read_text() == format_folded(merged)
    assert parse_folded(out.read_text()) == merged
    stdout = capsys.readouterr().out
    assert "pod/web-b: FAILED: pod web-b has no tracecar agent" in stdout
    assert "pod/web-d: FAILED: the profile of pod web-d failed: perf exited 255" in stdout
    assert f"merged flame graph of 2 pods -> {out}" in stdout
