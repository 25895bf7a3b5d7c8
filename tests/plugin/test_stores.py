"""``kubectl tracecar status`` (each store's state) and ``profile --push``, over fakes of
our own seams (the Kube API and ``reach``), as tests/plugin/test_commands.py does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubectl_tracecar import _sinks
from kubectl_tracecar._kube import JsonObject
from kubectl_tracecar.commands import profile
from kubectl_tracecar.errors import OK
from tests.plugin.support import FakeKube, options, reach_with, run
from tests.plugin.support import pod as _pod

CAPS = {
    "perf": {"available": True},
    "sinks": {
        "pyroscope": {
            "configured": True,
            "state": "ok",
            "last_success": "2026-12-06T15:30:00Z",
            "last_error": None,
            "queued_bytes": 2048,
            "dropped": 0,
        },
        "s3": {
            "configured": True,
            "state": "failing",
            "last_success": None,
            "last_error": "NoSuchBucket: the bucket tracecar does not exist",
            "queued_bytes": 5 << 20,
            "dropped": 3,
        },
    },
}
STATUS = {"sinks": ["pyroscope", "s3"], "continuous": True, "service_name": "shop/web"}


def _injected(name: str) -> JsonObject:
    pod = _pod(name, agent=True)
    pod["metadata"]["annotations"] = {"tracecar.dev/status": json.dumps(STATUS)}
    return pod


class StatusAgent:
    def __init__(self, caps: JsonObject) -> None:
        self.caps = caps

    def get_json(self, path: str, what: str) -> dict[str, Any]:
        return {"/healthz": {"version": "0.1.0"}, "/capabilities": self.caps}[path]


def test_status_shows_each_store(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reach_with(monkeypatch, StatusAgent(CAPS))
    kube = FakeKube(pods=[_injected("web-a")])
    assert run(kube, ["status", "web-a"]) == OK
    out = capsys.readouterr().out
    assert "stores (service_name=shop/web, continuous=on):" in out
    assert (
        "pyroscope  ok        last success 2026-12-06T15:30:00Z, queued 2.0 KiB, dropped 0" in out
    )
    assert "s3         failing   last success never, queued 5.0 MiB, dropped 3" in out
    assert "last error: NoSuchBucket: the bucket tracecar does not exist" in out


def test_status_json_has_the_sinks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reach_with(monkeypatch, StatusAgent(CAPS))
    kube = FakeKube(pods=[_injected("web-a")])
    assert run(kube, ["status", "web-a", "-o", "json"]) == OK
    row = json.loads(capsys.readouterr().out)
    assert row["sinks"] == CAPS["sinks"]
    assert row["service_name"] == "shop/web"
    assert row["continuous"] is True
    assert row["configured_sinks"] == ["pyroscope", "s3"]


def test_status_of_an_agent_without_sinks_says_so() -> None:
    row: dict[str, Any] = {"capabilities": {"perf": {}}, "sinks": None, "service_name": "x"}
    assert _sinks.status_lines(row) == [
        "  stores (service_name=x):",
        "    (this agent reports no sinks: an older version)",
    ]
    unconfigured = {"sinks": {"s3": {"configured": False, "state": "disabled"}}}
    assert _sinks.status_lines(unconfigured)[1] == "    s3         not configured"
    assert _sinks.status_lines({}) == []  # no agent reached, no annotation


@pytest.mark.parametrize(
    ("raw", "expect"),
    [
        ("not json", {}),
        ("[1]", {}),
        (json.dumps({"port": 7780}), {}),
        (
            json.dumps(STATUS),
            {
                "service_name": "shop/web",
                "continuous": True,
                "configured_sinks": ["pyroscope", "s3"],
            },
        ),
    ],
)
def test_injected_policy_reads_the_status_annotation(raw: str, expect: dict[str, Any]) -> None:
    pod = {"metadata": {"annotations": {"tracecar.dev/status": raw}}}
    assert _sinks.injected_policy(pod) == expect


class PushAgent:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def post_json(self, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        assert path == "/profiles"
        self.bodies.append(body)
        return {
            "id": "p1",
            "state": "succeeded",
            "links": {"folded": "/profiles/p1/folded", "flamegraph": "/profiles/p1/svg"},
            "metadata": {"samples": 9},
            "push": {"pyroscope": {"state": "sent"}},
        }

    def download(self, path: str, what: str) -> bytes:
        return b"main;hot 9\n" if path.endswith("folded") else b"<svg/>"


def test_profile_push_asks_each_agent_and_says_where_to_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = PushAgent()
    reach_with(monkeypatch, agent)
    kube = FakeKube(pods=[_injected("web-a"), _injected("web-b")])
    out = tmp_path / "web.svg"
    assert run(kube, ["profile", "-l", "app=web", "-d", "1s", "--push", "-o", str(out)]) == OK
    assert agent.bodies == [{"duration_s": 1.0, "push": True}] * 2
    text = capsys.readouterr().out
    assert text.count("pushed: pyroscope: sent") == 2
    assert (
        'process_cpu:cpu:nanoseconds:cpu:nanoseconds{service_name="shop/web",source="on-demand"}'
        in text
    )
    assert out.exists()


def test_profile_without_push_sends_no_push_field() -> None:
    assert "push" not in profile.request_body(options(["profile", "web-a", "-d", "2s"]))
    pushed = options(["profile", "web-a", "-d", "2s", "--push"])
    assert profile.request_body(pushed)["push"] is True


class CapsPushAgent(PushAgent):
    """An agent whose job view does not say how the push went: the plugin asks
    /capabilities for the stores' state instead."""

    def post_json(self, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        job = super().post_json(path, body, what)
        job.pop("push")
        return job

    def get_json(self, path: str, what: str) -> dict[str, Any]:
        assert path == "/capabilities"
        return CAPS


def test_profile_push_reports_the_stores_state_from_capabilities(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reach_with(monkeypatch, CapsPushAgent())
    kube = FakeKube(pods=[_injected("web-a")])
    argv = ["profile", "web-a", "-d", "1s", "--push", "-o", str(tmp_path / "a.svg")]
    assert run(kube, argv) == OK
    text = capsys.readouterr().out
    assert "pushed: pyroscope: ok, queued 2.0 KiB, s3: failing, queued 5.0 MiB" in text
    assert "(last error: NoSuchBucket" in text


def test_push_line_shapes() -> None:
    assert _sinks.push_line({"pyroscope": {"state": "spooled"}, "s3": "stored"}) == (
        "pyroscope: spooled, s3: stored"
    )
    assert _sinks.push_line(True) == "yes"
    assert _sinks.push_line({}) == "nothing"
