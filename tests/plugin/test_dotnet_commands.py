"""``kubectl tracecar dump`` and ``counters`` over fakes of our own seams (the Kube
seam and ``reach``, the port-forward + client): no cluster, no kubectl."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from kubectl_tracecar import _cli
from kubectl_tracecar.commands import _reach, counters
from kubectl_tracecar.errors import OK, PluginError
from tests.plugin.support import FakeKube, options, reach_with, run
from tests.plugin.support import pod as _pod

COUNTERS = {
    "pid": 7,
    "runtime_version": "3.1.23",
    "interval_s": 1,
    "counters": {
        "gc-heap-size": {
            "display_name": "GC Heap Size", "units": "MB", "type": "Mean", "value": 9.0,
        },
        "cpu-usage": {"display_name": "CPU Usage", "units": "%", "type": "Mean", "value": 5.0},
        "exception-count": {
            "display_name": "Exception Count", "units": "", "type": "Sum", "value": 431.0,
        },
        "my-own": {"display_name": "", "units": "", "type": "Mean", "value": 1.5},
    },
}  # fmt: skip


class FakeAgent:
    """The agent's dump and counters endpoints, as the agent answers them."""

    def __init__(self, *, fail: bool = False) -> None:
        self.calls: list[tuple[str, str]] = []
        self.polls = 0
        self.fail = fail

    def post_json(self, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        self.calls.append(("POST", path))
        assert path == "/processes/7/dump" and body == {"type": "mini"}
        est = {"estimate": {"bytes": 8 << 20}}
        return {"id": "d1", "state": "running", "writer": "createdump of .NET 3.1.23",
                "type": "mini", "progress": 0.0, "result": est}  # fmt: skip

    def get_json(self, path: str, what: str, **kw: Any) -> dict[str, Any]:
        self.calls.append(("GET", path))
        if path.startswith("/dotnet/7/counters"):
            assert kw["params"] == {"duration_s": 1.5, "interval_s": 1}
            return COUNTERS
        assert path == "/dumps/d1"
        self.polls += 1
        if self.polls < 2:
            return {"id": "d1", "state": "running", "progress": 0.5, "result": {}}
        if self.fail:
            return {"id": "d1", "state": "failed", "error": "createdump failed: ptrace denied"}
        return {"id": "d1", "state": "succeeded", "progress": 1.0, "result": {"bytes": 4}}

    def download(self, path: str, what: str) -> bytes:
        self.calls.append(("GET", path))
        assert path == "/dumps/d1/core"
        return b"\x7fELF"

    def delete(self, path: str, what: str) -> None:
        self.calls.append(("DELETE", path))


@pytest.fixture
def agent(monkeypatch: pytest.MonkeyPatch) -> FakeAgent:
    fake = FakeAgent()
    reach_with(monkeypatch, fake)
    monkeypatch.setattr(_reach, "POLL_S", 0)
    return fake


KUBE_PODS = [_pod("web-a", agent=True)]


def test_dump_downloads_and_removes(agent: FakeAgent, tmp_path: Path) -> None:
    out = tmp_path / "core.dmp"
    argv = ["dump", "web-a", "--pid", "7", "--type", "mini", "-o", str(out)]
    assert run(FakeKube(pods=KUBE_PODS), argv) == OK
    assert out.read_bytes() == b"\x7fELF"
    assert agent.calls == [
        ("POST", "/processes/7/dump"),
        ("GET", "/dumps/d1"),
        ("GET", "/dumps/d1"),
        ("GET", "/dumps/d1/core"),
        ("DELETE", "/dumps/d1"),
    ]


def test_dump_failure_says_why(agent: FakeAgent, tmp_path: Path) -> None:
    agent.fail = True
    argv = ["dump", "web-a", "--pid", "7", "--type", "mini", "-o", str(tmp_path / "x")]
    with pytest.raises(PluginError, match="failed: createdump failed: ptrace denied"):
        run(FakeKube(pods=KUBE_PODS), argv)
    assert not (tmp_path / "x").exists()


def test_dump_needs_a_pid() -> None:
    with pytest.raises(SystemExit):
        _cli.parse(["dump", "web-a"])
    with pytest.raises(SystemExit):
        _cli.parse(["dump", "web-a", "--pid", "7", "--type", "huge"])


def test_counters_table_refreshes(agent: FakeAgent) -> None:
    out = io.StringIO()
    o = options(["counters", "web-a", "--pid", "7"])
    assert counters.run(FakeKube(pods=KUBE_PODS), o, out=out, rounds=2) == OK
    text = out.getvalue()
    assert text.count("[System.Runtime] pid 7 (.NET 3.1.23)") == 2
    lines = text.splitlines()[:5]
    # dotnet-counters' order first (CPU, GC heap, exceptions), then the rest by name
    assert "CPU Usage (%)" in lines[1] and lines[1].rstrip().endswith("5.00")
    assert "GC Heap Size (MB)" in lines[2]
    assert "Exception Count ( / 1 s)" in lines[3] and "431.00" in lines[3]
    assert lines[4].split() == ["my-own", "1.50"]
