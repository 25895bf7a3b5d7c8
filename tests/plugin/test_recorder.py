"""``kubectl tracecar recorder`` over fakes of our own seams: the pods from a
:class:`FakeKube`, the agent reached through a fake of ``reach`` answering as the
agent's ``/recorder`` does (status, start, stop, profiles with coverage headers)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from kubectl_tracecar import _pods
from kubectl_tracecar._kube import JsonObject, Kube
from kubectl_tracecar.commands import _reach, recorder
from kubectl_tracecar.errors import Unsupported, UsageError
from tests.plugin import support
from tests.plugin.support import FakeKube
from tests.plugin.support import pod as _pod

NOW = 1_796_570_230.0
STATUS = {
    "state": "recording",
    "window": {"start": NOW - 30, "end": NOW},
    "complete_until": NOW,
    "lag_s": 0.8,
    "bytes": 120_000,
    "samples": 570,
    "python": {"7": {"comm": "python3", "profiler": "py-spy", "state": "recording"}},
}


class FakeRecorderAgent:
    """The part of AgentClient the recorder command uses, as the agent answers."""

    def __init__(self, pod: str, *, running: bool = True) -> None:
        self.pod = pod
        self.running = running
        self.calls: list[tuple[str, str, Any]] = []

    def get_json(self, path: str, what: str, **kw: Any) -> dict[str, Any]:
        assert path == "/recorder"
        self.calls.append(("GET", path, None))
        return dict(STATUS) if self.running else {"state": "stopped", "window": None}

    def post_json(self, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        self.calls.append(("POST", path, body))
        return {**STATUS, "request": body}

    def delete(self, path: str, what: str) -> None:
        self.calls.append(("DELETE", path, None))

    def _profile(self, params: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        start, end = float(params["from"]), float(params["to"])
        lo = max(start, NOW - 30)
        headers = {
            "x-tracecar-from": f"{lo:.3f}",
            "x-tracecar-to": f"{min(end, NOW):.3f}",
            "x-tracecar-requested-from": params["from"],
            "x-tracecar-requested-to": params["to"],
            "x-tracecar-coverage": "partial" if start < NOW - 30 else "whole",
        }
        body = f"{self.pod};main;work 19\n" if params["format"] == "folded" else b"<svg/>"
        return (body.encode() if isinstance(body, str) else body), headers

    def download_with_headers(
        self, path: str, what: str, *, params: dict[str, str]
    ) -> tuple[bytes, dict[str, str]]:
        self.calls.append(("GET", path, params))
        return self._profile(params)

    def download(self, path: str, what: str, *, params: dict[str, str]) -> bytes:
        self.calls.append(("GET", path, params))
        return self._profile(params)[0]


@pytest.fixture
def agents(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeRecorderAgent]:
    made: dict[str, FakeRecorderAgent] = {}

    @contextmanager
    def reach(
        kube: Kube, pod: JsonObject, **kw: object
    ) -> Iterator[tuple[FakeRecorderAgent, _pods.Agent]]:
        name = pod["metadata"]["name"]
        made.setdefault(name, FakeRecorderAgent(name, running=name != "web-off"))
        yield made[name], _pods.find_agent(pod)

    monkeypatch.setattr(_reach, "reach", reach)
    return made


PODS = [_pod(n, agent=True) for n in ("web-a", "web-b", "web-off")]


def run(argv: list[str]) -> int:
    return support.run(FakeKube(pods=PODS), argv)


def test_start_status_stop(
    agents: dict[str, FakeRecorderAgent], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["recorder", "web-a", "start", "-c", "app", "--retain", "30m", "--max-bytes", "8Mi"]
    assert run(argv) == 0
    assert agents["web-a"].calls == [
        ("POST", "/recorder", {"container": "app", "retain_s": 1800.0, "max_bytes": 8 << 20})
    ]
    assert run(["recorder", "web-a"]) == 0  # status is the default
    out = capsys.readouterr().out
    assert "lag 0.8 s" in out and "python pid 7 (python3): py-spy" in out
    assert "2026-12-06T15:16:40Z .. 2026-12-06T15:17:10Z (30 s)" in out
    assert run(["recorder", "web-a", "stop"]) == 0
    assert agents["web-a"].calls[-1] == ("DELETE", "/recorder", None)


def test_last_5m_writes_the_retained_part_and_says_so(
    agents: dict[str, FakeRecorderAgent], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "flame.svg"
    assert run(["recorder", "web-a", "--last", "5m", "-o", str(out)]) == 0
    assert out.read_bytes() == b"<svg/>"
    profile = next(c for c in agents["web-a"].calls if c[1] == "/recorder/profile")
    # Counted back from what the pod's recorder has complete, not the laptop's clock.
    assert profile[2] == {"from": f"{NOW - 300:.3f}", "to": f"{NOW:.3f}", "format": "svg"}
    err = capsys.readouterr().err
    assert "only that part is retained" in err and "2026-12-06T15:12:10Z" in err


def test_from_to_in_iso_8601_and_folded(
    agents: dict[str, FakeRecorderAgent], tmp_path: Path
) -> None:
    out = tmp_path / "x.folded"
    argv = ["recorder", "web-a", "--from", "2026-12-06T15:16:50Z", "--to", str(NOW), "-o", str(out)]
    assert run(argv) == 0
    assert out.read_text() == "web-a;main;work 19\n"
    params = agents["web-a"].calls[-1][2]
    assert params["from"] == f"{NOW - 20:.3f}" and params["format"] == "folded"


def test_many_pods_merge_and_one_stopped_recorder_fails_alone(
    agents: dict[str, FakeRecorderAgent], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "all.folded"
    assert run(["recorder", "-l", "app=web", "--last", "1m", "-o", str(out)]) == 1
    assert out.read_text() == "web-a;main;work 19\nweb-b;main;work 19\n"
    assert (tmp_path / "all.web-a.folded").exists() and (tmp_path / "all.web-b.folded").exists()
    assert "pod/web-off: FAILED: the flight recorder is not running" in capsys.readouterr().out
    # The action may come where TARGET goes when -l names the pods.
    assert run(["recorder", "-l", "app=web", "stop"]) == 0
    assert all(a.calls[-1][0] == "DELETE" for a in agents.values())


def test_one_stopped_recorder_says_how_to_start_it(agents: dict[str, FakeRecorderAgent]) -> None:
    with pytest.raises(Unsupported, match="not running in pod web-off") as e:
        run(["recorder", "web-off", "--last", "5m"])
    assert e.value.hint and "recorder web-off start" in e.value.hint


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["recorder", "web-a", "--last", "5m", "--from", "1"], "not both"),
        (["recorder", "web-a", "stop", "--last", "5m"], "drop 'stop'"),
        (["recorder", "web-a", "--from", "yesterday"], "ISO 8601"),
        (["recorder", "web-a", "--from", "200", "--to", "100"], "must be before"),
        (["recorder", "web-a", "--last", "5m", "-o", "x.data"], "not perf_data"),
        (["recorder", "web-a", "--last", "5m", "-o", "x.pdf"], "cannot tell the format"),
        (["recorder", "web-a", "--last", "soon"], "--last"),
        (["recorder", "web-a", "--to", "100"], "--to needs --from"),
        (["recorder", "web-a", "start", "--max-bytes", "lots"], "16Mi"),
        (["recorder", "web-a", "start", "--pid", "7", "-c", "app"], "not both"),
    ],
)
def test_bad_input_says_what_is_allowed(
    agents: dict[str, FakeRecorderAgent], argv: list[str], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        run(argv)
    assert agents == {}  # refused before any pod was reached


def test_sizes_and_times() -> None:
    assert recorder.parse_bytes("16Mi") == 16 << 20 and recorder.parse_bytes("500K") == 500_000
    assert recorder.parse_time("2026-12-06T15:17:10Z", flag="--from") == NOW
    assert recorder.parse_time("2026-12-06T15:17:10", flag="--from") == NOW  # UTC
    assert recorder.parse_time("1796570230.5", flag="--from") == NOW + 0.5


def test_the_command_is_wired() -> None:
    from kubectl_tracecar.commands import COMMANDS

    assert recorder.COMMAND in COMMANDS
    assert recorder.COMMAND.run is recorder.run
