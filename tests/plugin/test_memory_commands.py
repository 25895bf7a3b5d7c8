"""``kubectl tracecar memory`` and ``heapdump`` over fakes of our own seams (the Kube
seam and ``reach``, the port-forward + client): no cluster, no kubectl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubectl_tracecar import _cli
from kubectl_tracecar.commands import _reach
from kubectl_tracecar.errors import OK, PluginError
from tests.plugin.support import FakeKube, options, reach_with, run
from tests.plugin.support import pod as _pod

MI = 1 << 20


def snapshot(pid: int, *, runtime: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "pid": pid,
        "comm": "java" if pid == 7 else "worker",
        "container": "app",
        "runtime": "java" if pid == 7 else "native",
        "taken_at": 1.0,
        "totals": {
            "rss_bytes": 300 * MI, "pss_bytes": 290 * MI, "swap_bytes": 0,
            "swap_pss_bytes": 0, "anonymous_bytes": 250 * MI, "file_bytes": 50 * MI,
            "pss_anon_bytes": 250 * MI, "pss_file_bytes": 40 * MI, "pss_shmem_bytes": 0,
            "private_bytes": 280 * MI, "shared_bytes": 20 * MI, "locked_bytes": 0,
        },
        "mappings": 2,
        "by_kind": [],
        "largest_mappings": [
            {"start": "e0000000", "end": "f0000000", "perms": "rw-p", "kind": "anon",
             "path": "", "size_bytes": 256 * MI, "rss_bytes": 240 * MI, "pss_bytes": 240 * MI,
             "anonymous_bytes": 240 * MI, "swap_bytes": 0},
        ],
        "runtime_memory": runtime,
        "notes": [],
    }  # fmt: skip


JAVA_RUNTIME = {
    "runtime": "java",
    "available": True,
    "tool": "jattach",
    "java_heap": {
        "collector": "garbage-first heap", "committed_bytes": 384 * MI, "used_bytes": 130 * MI,
        "metaspace_used_bytes": None, "metaspace_committed_bytes": None,
        "text": " garbage-first heap   total 393216K, used 133120K",
    },
    "class_histogram": {
        "pid": 7, "live": False, "total_instances": 23000, "total_bytes": 68 * MI,
        "classes": 200,
        "entries": [{"rank": 1, "instances": 70, "bytes": 67 * MI, "class_name": "[B",
                     "module": "java.base@17"}],
    },
}  # fmt: skip


class FakeAgent:
    """The agent's memory and dump endpoints, as the agent answers them."""

    def __init__(self, *, hprof: bool = True) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.hprof = hprof
        self.polls = 0

    def get_json(self, path: str, what: str, **kw: Any) -> Any:
        self.calls.append(("GET", path, kw.get("params")))
        if path == "/processes":
            return [
                {"pid": 7, "container": "app", "container_id": None},
                {"pid": 9, "container": "app", "container_id": None},
                {"pid": 12, "container": "sidecar", "container_id": None},
            ]
        if path == "/processes/7/memory":
            return snapshot(7, runtime=JAVA_RUNTIME)
        if path == "/processes/9/memory":
            return snapshot(9)
        if path == "/processes/12/memory":  # exited since the listing
            raise PluginError("no process with pid 12 in this pod")
        assert path == "/dumps/d1"
        self.polls += 1
        links = {"hprof": "/dumps/d1/heap.hprof"} if self.hprof else {"core": "/dumps/d1/core"}
        return {"id": "d1", "state": "succeeded", "progress": 1.0, "result": {},
                "format": "hprof" if self.hprof else "core", "links": links}  # fmt: skip

    def post_json(self, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        self.calls.append(("POST", path, body))
        est = {"estimate": {"bytes": 8 * MI}}
        return {"id": "d1", "state": "running", "writer": "jattach dumpheap (live objects)",
                "type": "heap", "progress": 0.0, "result": est}  # fmt: skip

    def download(self, path: str, what: str) -> bytes:
        self.calls.append(("GET", path, None))
        return b"JAVA PROFILE 1.0.2\0" if path.endswith(".hprof") else b"\x7fELF"

    def delete(self, path: str, what: str) -> None:
        self.calls.append(("DELETE", path, None))


@pytest.fixture
def agent(monkeypatch: pytest.MonkeyPatch) -> FakeAgent:
    fake = FakeAgent()
    reach_with(monkeypatch, fake)
    monkeypatch.setattr(_reach, "POLL_S", 0)
    return fake


KUBE_PODS = [_pod("web-a", agent=True)]


def test_memory_table_of_every_process(
    agent: FakeAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(FakeKube(pods=KUBE_PODS), ["memory", "web-a"]) == OK
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["CONTAINER", "PID", "RUNTIME", "RSS", "PSS"]
    assert "300.0Mi" in lines[1] and "250.0Mi" in lines[1]
    assert len(lines) == 3  # pid 12 exited since the listing: the others are the answer
    # The pod-wide table does not attach to every runtime unless asked (--runtime).
    params = [c[2] for c in agent.calls if c[1].endswith("/memory")]
    assert all(p["runtime"] == "false" for p in params)


def test_memory_one_process_in_detail(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(FakeKube(pods=KUBE_PODS), ["memory", "web-a", "--pid", "7"]) == OK
    out = capsys.readouterr().out
    assert "heap 130.0Mi of 384.0Mi" in out
    assert "largest mappings" in out and "240.0Mi" in out
    assert "classes by bytes" in out and "[B" in out
    assert agent.calls[0][2]["runtime"] == "true"


def test_memory_json(agent: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(FakeKube(pods=KUBE_PODS), ["memory", "web-a", "-c", "app", "-o", "json"]) == OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["pod"] == "web-a"
    assert [p["pid"] for p in doc["processes"]] == [7, 9]


def test_heapdump_downloads_the_hprof(agent: FakeAgent, tmp_path: Path) -> None:
    out = tmp_path / "heap.hprof"
    assert run(FakeKube(pods=KUBE_PODS), ["heapdump", "web-a", "--pid", "7", "-o", str(out)]) == OK
    assert out.read_bytes().startswith(b"JAVA PROFILE 1.0.2")
    assert agent.calls[0] == ("POST", "/processes/7/heapdump", {"live": True})
    assert ("GET", "/dumps/d1/heap.hprof", None) in agent.calls
    assert agent.calls[-1] == ("DELETE", "/dumps/d1", None)


def test_heapdump_of_a_native_process_is_a_core(
    agent: FakeAgent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent.hprof = False
    monkeypatch.chdir(tmp_path)
    argv = ["heapdump", "web-a", "--pid", "9", "--keep", "--all-objects"]
    assert run(FakeKube(pods=KUBE_PODS), argv) == OK
    assert (tmp_path / "core.9").read_bytes() == b"\x7fELF"
    assert agent.calls[0][2] == {"live": False}
    assert not any(c[0] == "DELETE" for c in agent.calls)


def test_heapdump_needs_a_pid() -> None:
    with pytest.raises(SystemExit):
        _cli.complete(["heapdump", "web-a"])
    assert options(["heapdump", "--pid", "7", "web-a"]).pid == 7
