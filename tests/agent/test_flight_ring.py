"""The flight recorder's ring (its bounds by time and bytes, complete seconds, Python
seconds replacing the sampler's, intervals, process groups), fed real bpftrace map
lines; the symbolizer, the process table and the agent's own tree are our seams, faked."""

from __future__ import annotations

import asyncio
import json

import pytest

from agent import procfs
from agent.errors import Conflict, Invalid
from agent.profiling import FlightRecorder, ProcessGroup, RecorderRequest, _flight_recorder, when
from agent.profiling._flight_recorder import Window, _Run
from agent.profiling._flight_ring import (
    LATE_AFTER_S,
    SAMPLER_LATE_AFTER_S,
    TRIMMED_FRAME,
    ProcessMeta,
    Ring,
    Slice,
    trim,
)


def _line(stacks: dict[str, int]) -> str:
    return json.dumps({"type": "map", "data": {"@s": stacks}})


KEY_A = "5,,\n\t4010 0x4010 ([unknown])\n\t4000 0x4000 ([unknown])\n,app"
KEY_B = "5,,\n\t4020 0x4020 ([unknown])\n\t4000 0x4000 ([unknown])\n,app"
KEY_PY = "7,,\n\t4030 0x4030 ([unknown])\n,python3"
KEY_AGENT = "9,,\n\t4010 0x4010 ([unknown])\n,python3"
META = {
    5: ProcessMeta(comm="app", container="app", runtime="native"),
    7: ProcessMeta(comm="python3", container="web", runtime="python"),
    9: ProcessMeta(comm="python3", container="agent", runtime="python"),
}


@pytest.fixture(autouse=True)
def seams(monkeypatch: pytest.MonkeyPatch) -> None:
    names = {0x4000: "main", 0x4010: "alpha", 0x4020: "beta", 0x4030: "_PyEval_EvalFrameDefault"}

    class Names:  # the recorder's symbolizer (agent.symbolize.ustacks.UserStacks)
        leaf_fixes = 0

        def frames(self, pid: int, addrs: tuple[int, ...]) -> list[str]:
            return [names[a] for a in reversed(addrs)]

    monkeypatch.setattr(_flight_recorder.FlightRecorder, "_names", lambda self, run: Names())
    monkeypatch.setattr(procfs, "own_tree", lambda: {9})
    monkeypatch.setattr(_flight_recorder, "_describe", META.get)


def recorder(req: RecorderRequest) -> tuple[FlightRecorder, _Run]:
    rec = FlightRecorder(max_retain_s=3600, max_bytes=1 << 20)
    ring = Ring(retain_s=req.retain_s, max_bytes=req.max_bytes, frequency_hz=req.frequency_hz)
    run = _Run(request=req, ring=ring)
    rec._run = run
    return rec, run


def interval(rec: FlightRecorder, start: float, end: float) -> Slice:
    """What GET /recorder/profile merges (in a worker thread)."""
    return asyncio.run(rec.merged(start, end))


def feed(rec: FlightRecorder, run: _Run, seconds: list[tuple[int, dict[str, int]]],
         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    for t, stacks in seconds:
        monkeypatch.setattr("agent.profiling._flight_recorder.time.time", lambda t=t: t + 1.05)
        asyncio.run(rec._add(run, t, _line(stacks)))


def test_buckets_intervals_and_the_time_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    rec, run = recorder(RecorderRequest(retain_s=5))
    feed(rec, run, [(100 + i, {KEY_A: 19, KEY_AGENT: 3}) for i in range(4)], monkeypatch)
    feed(rec, run, [(104 + i, {KEY_B: 19}) for i in range(4)], monkeypatch)
    assert rec.status().window == Window(start=103.0, end=108.0)  # 5 s kept
    part = interval(rec, 103.2, 105)
    assert part.stacks == {"app;main;alpha": 19, "app;main;beta": 19}
    assert (part.start, part.end, part.clipped) == (103, 105, False)
    assert interval(rec, 106, 108).stacks == {"app;main;beta": 38}  # the agent's own left out
    with pytest.raises(Invalid, match="before"):
        interval(rec, 106, 104)
    with pytest.raises(Invalid, match="wholly outside the retained window"):
        interval(rec, 50, 60)
    assert rec.complete_until() == 108


def test_an_interval_beyond_the_window_answers_with_the_retained_part(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rec, run = recorder(RecorderRequest(retain_s=30))
    feed(rec, run, [(1_796_570_200 + i, {KEY_A: 19}) for i in range(30)], monkeypatch)
    now = 1_796_570_230
    part = interval(rec, now - 60, now)  # "the last minute", 30 s retained
    assert (part.start, part.end) == (now - 30, now) and part.clipped
    assert part.stacks == {"app;main;alpha": 30 * 19}
    assert (part.asked_start, part.window_start, part.window_end) == (now - 60, now - 30, now)
    part = interval(rec, now - 10, now + 50)  # into the future: up to what is complete
    assert (part.start, part.end) == (now - 10, now) and part.clipped
    assert not interval(rec, now - 10, now).clipped
    # Wholly outside (before, after) and inverted: 422s printing the times in full.
    with pytest.raises(Invalid, match="1000000000000000000000"):
        interval(rec, 1e20, 1e21)  # no date to print: still a 422, never a 500
    for start, end in ((now - 600, now - 31), (now + 5, now + 50), (now, now - 60)):
        with pytest.raises(Invalid) as e:
            interval(rec, start, end)
        assert "1796570" in e.value.detail and "e+09" not in e.value.detail, e.value.detail
        assert "2026-12-06T" in e.value.detail, e.value.detail


def test_times_print_in_full_and_as_iso_8601() -> None:
    assert when(1796570260) == "1796570260 (2026-12-06T15:17:40.000Z)"
    assert when(1796570260.25) == "1796570260.25 (2026-12-06T15:17:40.250Z)"
    assert when(1e20) == "100000000000000000000"  # no calendar date: the number alone


def test_the_bytes_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    rec, run = recorder(RecorderRequest(retain_s=3600, max_bytes=100))
    feed(rec, run, [(100 + i, {KEY_A: 1, KEY_B: 1}) for i in range(20)], monkeypatch)
    s = rec.status()
    assert s.bytes is not None and 0 < s.bytes <= 100, s
    assert s.evicted_buckets is not None and s.evicted_buckets > 0 and s.buckets == 1, s


def test_a_second_bigger_than_the_bound_is_trimmed_not_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A busy second of many distinct stacks and a small bound: the ring keeps the
    # newest second, its heaviest stacks, the rest counted under one frame. Never empty,
    # never above the bound, the sample total right.
    stacks = {f"app;main;f{i:03}": 1 for i in range(50)} | {"app;main;hot": 40}
    kept, cut = trim({5: stacks}, 300)
    assert kept[5]["app;main;hot"] == 40 and kept[0] == {TRIMMED_FRAME: cut} and cut > 0
    assert sum(n for per in kept.values() for n in per.values()) == 90
    ring = Ring(retain_s=60, max_bytes=300, frequency_hz=19)
    for second in (100, 101):
        ring.add_sampler(second, {5: stacks})
        ring.commit(second + 1.05)
    assert len(ring.buckets) == 1 and ring.buckets[0].start == 101
    assert 0 < ring.size <= 300 and ring.trimmed_samples == 2 * cut
    assert sum(ring.folded(101, 102).values()) == 90


def test_python_seconds_replace_the_interpreter_frames() -> None:
    ring = Ring(retain_s=60, max_bytes=1 << 20, frequency_hz=19)
    ring.describe(5, META[5])
    ring.describe(7, META[7])
    assert ring.expect(100, 7) and ring.expect(101, 7)
    ring.add_sampler(100, {5: {"app;main": 19}, 7: {"python3;_PyEval_EvalFrameDefault": 19}})
    assert ring.commit(101.05) == 0  # py-spy's second 100 is not back yet: not complete
    assert ring.complete_until is None
    ring.add_python(100, 7, {"python3;<module> (/app/x.py:1);alpha (/app/x.py:3)": 19})
    assert ring.commit(101.5) == 1 and ring.complete_until == 101
    assert ring.folded(100, 101) == {
        "app;main": 19,
        "python3;<module> (/app/x.py:1);alpha (/app/x.py:3)": 19,
    }
    # A failed run: the sampler's stacks of that process stay for that second.
    ring.add_sampler(101, {7: {"python3;_PyEval_EvalFrameDefault": 19}})
    ring.add_python(101, 7, None)
    assert ring.commit(102.1) == 1
    assert ring.folded(101, 102) == {"python3;_PyEval_EvalFrameDefault": 19}
    # A stuck run does not hold the ring back; what it brings later is counted as late.
    assert ring.expect(102, 7)
    ring.add_sampler(102, {5: {"app;main": 19}})
    assert ring.commit(103.0) == 0
    assert ring.commit(103.0 + LATE_AFTER_S) == 1
    ring.add_python(102, 7, {"python3;x": 19})
    assert ring.late_samples == 19 and not ring.expect(102, 7)
    assert ring.lag_s(104.5) == 1.5


def test_a_late_sampler_second_is_waited_for_not_dropped() -> None:
    # A loaded node: py-spy delivered second 100 in time, bpftrace (the pod's native
    # stacks) 6 s after it ended. Giving up on it at py-spy's bound would keep the
    # Python stacks and drop every native one of that second.
    ring = Ring(retain_s=60, max_bytes=1 << 20, frequency_hz=19)
    assert ring.expect(100, 7)
    ring.add_python(100, 7, {"python3;<module> (/app/x.py:1)": 19})
    assert ring.commit(101.0 + LATE_AFTER_S + 2) == 0 and ring.complete_until is None
    ring.add_sampler(100, {5: {"app;main": 19}, 7: {"python3;_PyEval_EvalFrameDefault": 19}})
    assert ring.commit(107.0) == 1 and ring.late_samples == 0
    assert ring.folded(100, 101) == {"app;main": 19, "python3;<module> (/app/x.py:1)": 19}
    # A stalled sampler holds the ring back only so long; what it brings later is late.
    assert ring.expect(101, 7)
    ring.add_python(101, 7, {"python3;<module> (/app/x.py:1)": 19})
    assert ring.commit(102.0 + SAMPLER_LATE_AFTER_S - 0.1) == 0
    assert ring.commit(102.0 + SAMPLER_LATE_AFTER_S) == 1 and ring.complete_until == 102
    ring.add_sampler(101, {5: {"app;main": 19}})
    assert ring.late_samples == 19


def test_samples_per_process_group_for_sinks(monkeypatch: pytest.MonkeyPatch) -> None:
    rec, run = recorder(RecorderRequest(retain_s=60))
    feed(rec, run, [(100, {KEY_A: 19, KEY_PY: 10}), (101, {KEY_B: 19})], monkeypatch)
    assert rec.complete_until() == 102
    groups = rec.samples(start=100, end=110)  # clipped to what is complete
    assert [(g.group, g.pids, g.start, g.duration_s) for g in groups] == [
        (ProcessGroup(container="app", runtime="native"), (5,), 100.0, 2.0),
        (ProcessGroup(container="web", runtime="python"), (7,), 100.0, 2.0),
    ]
    assert groups[0].stacks == {"app;main;alpha": 19, "app;main;beta": 19}
    assert groups[1].comms == ("python3",) and groups[1].frequency_hz == 19
    by_pid = rec.samples(start=101, end=102, by="pid")
    assert [(g.group.pid, g.start, g.duration_s) for g in by_pid] == [(5, 101.0, 1.0)]
    assert rec.samples(start=200, end=210) == [] and rec.samples(start=102, end=100) == []


def test_no_recorder() -> None:
    rec = FlightRecorder(max_retain_s=3600, max_bytes=1 << 20)
    assert rec.status().model_dump(exclude_defaults=True) == {"state": "stopped", "window": None}
    with pytest.raises(Conflict, match="POST /recorder"):
        interval(rec, 1, 2)
    assert rec.limits()["max_bytes"] == 1 << 20
    assert rec.samples(start=1, end=2) == [] and rec.complete_until() is None


def test_a_container_target_keeps_its_processes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    rec, run = recorder(RecorderRequest(container="web"))
    feed(rec, run, [(100, {KEY_A: 19, KEY_PY: 10})], monkeypatch)
    assert interval(rec, 100, 101).stacks == {"python3;_PyEval_EvalFrameDefault": 10}
    assert run.meta[5] == META[5]  # read once, kept while the process lives


def test_memory_and_status_answer_typed_rss_trends(monkeypatch: pytest.MonkeyPatch) -> None:
    rec, run = recorder(RecorderRequest(retain_s=60))
    for i, mib in enumerate((10, 12, 16)):
        run.ring.describe(5, META[5])
        run.ring.add_sampler(100 + i, {5: {"app;main": 19}}, rss={5: mib << 20})
        run.ring.commit(100 + i + 1.05)
    monkeypatch.setattr("agent.profiling._flight_recorder.time.time", lambda: 103.05)
    doc = asyncio.run(rec.memory(100, 103)).model_dump(mode="json", by_alias=True)
    assert (doc["from"], doc["to"], doc["requested_from"]) == (100.0, 103.0, 100)
    (proc,) = doc["processes"]
    assert proc["series"] == [[100, 10 << 20], [101, 12 << 20], [102, 16 << 20]]
    assert (proc["pid"], proc["first_bytes"], proc["max_bytes"]) == (5, 10 << 20, 16 << 20)
    assert proc["growth_bytes"] == 6 << 20 and proc["growth_mib_per_min"] == 180.0
    status = asyncio.run(rec.status_with_rss())
    assert status.rss is not None and status.rss[0].model_dump() == {
        k: v for k, v in proc.items() if k != "series"
    }


def test_a_process_that_execs_is_named_after_its_new_program() -> None:
    # A container's first process seen before its exec (runc's init, on a loaded node):
    # named after the app once the watcher reads it again, in every interval.
    ring = Ring(retain_s=60, max_bytes=1 << 20, frequency_hz=19)
    ring.describe(9, ProcessMeta(comm="runc:[2:INIT]", container="app", runtime="native"))
    ring.add_sampler(100, {9: {"runc:[2:INIT];main": 1}})
    ring.commit(101.05)
    ring.describe(9, ProcessMeta(comm="burner", container="app", runtime="native"))
    ring.add_sampler(101, {9: {"burner;main;burn": 19}})
    ring.commit(102.05)
    for lo in (100, 101):
        (group,) = ring.groups(lo, 102, by="group")
        assert group.comms == ("burner",) and group.pids == (9,)
