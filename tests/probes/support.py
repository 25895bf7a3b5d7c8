"""Helpers the probes' integration tests share: attach, detach and read a probe; check
that no tracer or uprobe outlives it."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests import podsim


def group_of(agent: podsim.AgentHandle) -> str:
    return f"tracecar_podsim{agent.url.rsplit(':', 1)[1]}"


def tracers_of(agent: podsim.AgentHandle) -> list[str]:
    out = subprocess.run(
        ["pgrep", "-l", "-P", str(agent.container.host_pid)], capture_output=True, text=True
    ).stdout
    return [ln for ln in out.splitlines() if ln.split()[-1] in ("bpftrace", "perf")]


def our_uprobes(group: str) -> list[str]:
    path = Path("/sys/kernel/tracing/uprobe_events")
    text = path.read_text() if path.exists() else ""
    return [ln for ln in text.splitlines() if f":{group}/" in ln]


def assert_no_leftovers(agent: podsim.AgentHandle) -> None:
    deadline = time.monotonic() + 10
    while tracers_of(agent) or our_uprobes(group_of(agent)):
        assert time.monotonic() < deadline, (tracers_of(agent), our_uprobes(group_of(agent)))
        time.sleep(0.05)


def attach(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/probes", json=body)
    assert r.status_code == 201, r.text
    probe: dict[str, Any] = r.json()
    assert probe["state"] == "running", probe
    return probe


def detach(client: httpx.Client, probe_id: str) -> dict[str, Any]:
    r = client.delete(f"/probes/{probe_id}")
    assert r.status_code == 200, r.text
    state: dict[str, Any] = r.json()
    assert state["state"] == "finished", state
    return state


def events_of(client: httpx.Client, probe_id: str) -> list[dict[str, Any]]:
    r = client.get(f"/probes/{probe_id}/events")
    assert r.status_code == 200, r.text
    lines = [json.loads(ln) for ln in r.text.splitlines() if ln.strip()]
    assert lines[-1]["type"] == "end"
    return [ln for ln in lines if ln["type"] == "hit"]
