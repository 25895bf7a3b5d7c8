"""The off-CPU program's output parsed and folded: a real bpftrace output recorded on
this machine (data/offcpu-bpftrace.json: tests/agent/workloads.OFFCPU_C for 1 s),
with a fake symbolizer standing in for the process (our own seam)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import Invalid
from agent.profiling.offcpu import OffCpuStack, fold, parse_output, program, sampling_weight
from agent.profiling.planner import Limits, ProfileRequest, TargetFacts, plan

DATA = Path(__file__).resolve().parent / "data"
LIMITS = Limits(
    default_duration_s=10, max_duration_s=300, default_frequency_hz=99,
    max_frequency_hz=999, timeout_slack_s=60,
)  # fmt: skip
TARGET = TargetFacts(pid=7, comm="app", container="app", runtime="native")


def test_parses_a_real_bpftrace_output() -> None:
    stacks = parse_output((DATA / "offcpu-bpftrace.json").read_text())
    assert stacks and all(s.pid == 2 and s.comm == "oc" for s in stacks)
    assert all(s.kernel[0] == "__schedule" for s in stacks)  # innermost first, offsets gone
    assert all(s.user and all(a > 0x1000 for a in s.user) for s in stacks)
    total = sum(s.ns for s in stacks)
    assert 1.0e9 < total < 2.5e9  # two threads off CPU for most of one second
    assert sampling_weight((DATA / "offcpu-bpftrace.json").read_text()) == 1
    assert sampling_weight('{"type": "map", "data": {"@wmax": 6}}\n') == 6


def test_fold_is_root_first_weighted_in_microseconds() -> None:
    stacks = [
        OffCpuStack(5, "my app", ("__schedule", "schedule"), (0x30, 0x20, 0x10), 2_500_400),
        OffCpuStack(5, "my app", ("__schedule", "schedule"), (0x30, 0x20, 0x10), 1_000),
        OffCpuStack(5, "my app", ("__schedule",), (0x10,), 400),  # under 1 us: dropped
    ]
    seen: list[tuple[int, list[int]]] = []

    def names(pid: int, addrs: list[int]) -> list[str]:
        seen.append((pid, addrs))
        return [{0x10: "main", 0x20: "work", 0x30: "nanosleep"}[a] for a in addrs]

    assert fold(stacks, names=names) == {"my_app;main;work;nanosleep;schedule;__schedule": 2501}
    assert seen == [(5, [0x10, 0x20, 0x30])]  # one symbolization per process


def test_program_selects_targets_by_pid_in_the_agents_namespace() -> None:
    text = program(pids=[9, 7, 7], pid_ns=4026531836, duration_s=2.5, max_stacks_per_s=5000)
    assert "@__t[7] = 1; @__t[9] = 1;" in text
    assert "@__w = @__c / 500;" in text  # the cost bound, per 100 ms
    assert "$u->ns->ns.inum == 4026531836" in text and "interval:ms:2500" in text


def test_plan_off_cpu_and_its_bounds() -> None:
    req = ProfileRequest(type="off-cpu", pid=7, duration_s=2)
    p = plan(req, targets=[TARGET], target="pid 7", limits=LIMITS, output=Path("x"), pid_ns=1)
    assert p.type == "off-cpu" and p.argv[:3] == ["bpftrace", "-f", "json"]
    assert p.program is not None and p.argv[-1] == p.program and p.frequency_hz == 0
    bad_fields = (
        ({"frequency_hz": 99}, "frequency_hz"),
        ({"call_graph": "dwarf"}, "call_graph"),
        ({"duration_s": 1000}, "duration_s"),
    )
    for bad, field in bad_fields:
        with pytest.raises(Invalid) as e:
            plan(ProfileRequest(type="off-cpu", pid=7, **bad), targets=[TARGET], target="t",
                 limits=LIMITS, output=Path("x"), pid_ns=1)  # fmt: skip
        assert e.value.extra["field"] == field
    assert ProfileRequest().type == "cpu"
