"""The flight recorder's ring (its bounds by time and bytes, its intervals), fed real
bpftrace map lines; the symbolizer and the agent's own tree are our seams, faked."""

from __future__ import annotations

import asyncio
import json

import pytest

from agent import procfs, symbols
from agent.errors import Conflict, Invalid
from agent.profiling import FlightRecorder, RecorderRequest
from agent.profiling._flight import _Run


def _line(stacks: dict[str, int]) -> str:
    return json.dumps({"type": "map", "data": {"@s": stacks}})


KEY_A = "5,,\n\t4010 0x4010 ([unknown])\n\t4000 0x4000 ([unknown])\n,app"
KEY_B = "5,,\n\t4020 0x4020 ([unknown])\n\t4000 0x4000 ([unknown])\n,app"
KEY_AGENT = "9,,\n\t4010 0x4010 ([unknown])\n,python3"


@pytest.fixture(autouse=True)
def seams(monkeypatch: pytest.MonkeyPatch) -> None:
    names = {0x4000: "main", 0x4010: "alpha", 0x4020: "beta"}
    monkeypatch.setattr(symbols, "function_names", lambda pid, addrs: [names[a] for a in addrs])
    monkeypatch.setattr(procfs, "own_tree", lambda: {9})


def feed(rec: FlightRecorder, run: _Run, seconds: list[tuple[int, dict[str, int]]],
         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    for t, stacks in seconds:
        monkeypatch.setattr("agent.profiling._flight.time.time", lambda t=t: t + 1.0)
        asyncio.run(rec._add(run, _line(stacks)))


def test_buckets_intervals_and_the_time_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = FlightRecorder(max_retain_s=3600, max_bytes=1 << 20)
    run = _Run(request=RecorderRequest(retain_s=5))
    rec._run = run
    feed(rec, run, [(100 + i, {KEY_A: 19, KEY_AGENT: 3}) for i in range(4)], monkeypatch)
    feed(rec, run, [(104 + i, {KEY_B: 19}) for i in range(4)], monkeypatch)
    assert rec.status()["window"] == {"start": 103.0, "end": 108.0}  # 5 s kept
    stacks, start, end = rec.interval(103.2, 105)
    assert stacks == {"app;main;alpha": 19, "app;main;beta": 19} and (start, end) == (103, 105)
    assert rec.interval(106, 108)[0] == {"app;main;beta": 38}  # the agent's own left out
    with pytest.raises(Invalid, match="before"):
        rec.interval(106, 104)
    with pytest.raises(Invalid, match="outside the retained window"):
        rec.interval(50, 60)


def test_the_bytes_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = FlightRecorder(max_retain_s=3600, max_bytes=1 << 20)
    run = _Run(request=RecorderRequest(retain_s=3600, max_bytes=100))
    rec._run = run
    feed(rec, run, [(100 + i, {KEY_A: 1, KEY_B: 1}) for i in range(20)], monkeypatch)
    s = rec.status()
    assert 0 < s["bytes"] <= 100 and s["evicted_buckets"] > 0 and s["buckets"] == 1, s


def test_no_recorder() -> None:
    rec = FlightRecorder(max_retain_s=3600, max_bytes=1 << 20)
    assert rec.status() == {"state": "stopped", "window": None}
    with pytest.raises(Conflict, match="POST /recorder"):
        rec.interval(1, 2)
    assert rec.limits()["max_bytes"] == 1 << 20


def test_the_pid_to_container_cache_keeps_only_live_processes() -> None:
    # A container target caches each pid's container; pids that exited are dropped at
    # the next bucket, so the cache stays bounded on a long run with process churn.
    rec = FlightRecorder(max_retain_s=3600, max_bytes=1 << 20)
    run = _Run(request=RecorderRequest(container="app"))
    dead = 4_194_304  # above pid_max's ceiling: never a live pid
    run.containers = {dead: "app", 1: None}
    rec._bucket(run, _line({KEY_A: 3}))
    assert dead not in run.containers and 1 in run.containers
