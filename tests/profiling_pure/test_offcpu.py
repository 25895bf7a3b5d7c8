"""The off-CPU program's output parsed and folded: a real bpftrace output recorded on
this machine (data/offcpu-bpftrace.json: tests/agent/workloads.OFFCPU_C for 1 s),
with a fake symbolizer standing in for the process (our own seam)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from agent.errors import Invalid, Unavailable
from agent.profiling.offcpu_fold import (
    OffCpuStack,
    PerfTimedFolder,
    TimedStats,
    dwarf_period,
    fold,
    parse_output,
    perf_argv,
    perf_script_argv,
    program,
    sampling_weight,
)
from agent.profiling.planner import Limits, Plan, ProfileRequest, TargetFacts, plan

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
    req = ProfileRequest(type="off-cpu", pid=7, duration_s=2, call_graph="fp")
    p = plan(req, targets=[TARGET], target="pid 7", limits=LIMITS, output=Path("x"), pid_ns=1)
    assert p.type == "off-cpu" and p.bpftrace_argv[:3] == ["bpftrace", "-f", "json"]
    assert p.program is not None and p.bpftrace_argv[-1] == p.program and p.frequency_hz == 0
    bad_fields = (
        ({"frequency_hz": 99}, "frequency_hz"),
        ({"duration_s": 1000}, "duration_s"),
    )
    for bad, field in bad_fields:
        with pytest.raises(Invalid) as e:
            plan(ProfileRequest(type="off-cpu", pid=7, **bad), targets=[TARGET], target="t",
                 limits=LIMITS, output=Path("x"), pid_ns=1)  # fmt: skip
        assert e.value.extra["field"] == field
    assert ProfileRequest().type == "cpu"


# --- the DWARF (perf) recorder ---------------------------------------------------------

LIBC = TargetFacts(pid=7, comm="blk", container="app", runtime="native", frame_pointers=True)
GO = TargetFacts(pid=8, comm="srv", container="app", runtime="go")


def _fold_text(text: bytes, *, period: int = 1) -> tuple[dict[str, int], TimedStats]:
    folder = PerfTimedFolder(period=period)
    for line in text.splitlines(keepends=True):
        folder.feed(line)
    return folder.finish(), folder.stats


def test_a_real_perf_script_is_weighted_by_time_off_cpu() -> None:
    stacks, stats = _fold_text((DATA / "offcpu-perf-script.txt").read_bytes())
    disk = sum(v for k, v in stacks.items() if ";wait_for_disk;" in k)
    lock = sum(v for k, v in stacks.items() if ";wait_for_lock;" in k)
    assert 0.85 <= disk / (disk + lock) <= 0.95, (disk, lock)
    assert stats.stacks == 60 and stats.matched + stats.open_at_end == 60
    assert stats.unmatched == 0 and stats.cut_short == 0 and stats.no_user_stack == 0
    top = max(stacks, key=lambda k: stacks[k])
    assert top.startswith("blk;_start;") and top.endswith(";schedule;__schedule"), top
    assert ";main;wait_for_disk;usleep;__nanosleep;clock_nanosleep@GLIBC_2.2.5;" in top


_SAMPLE = b"""my app 5/6   10.000000000: sched:sched_switch:
\tffffffff82249848 __schedule ([kernel.kallsyms])
\t            1146 wait(int) (/srv/app)
\t            1161 [unknown] (/srv/libx.so)
\t            1070 start_thread (/lib/libc.so.6)

"""


def test_weights_periods_losses_and_names() -> None:
    text = (
        _SAMPLE
        + b"my app 5/6   10.000000100: PERF_RECORD_SWITCH OUT\n"
        + b"my app 5/6   10.002000000: PERF_RECORD_SWITCH IN\n"  # 2 ms off CPU
        + _SAMPLE.replace(b"10.000000000", b"10.003000000")  # its switch-in is lost...
        + _SAMPLE.replace(b"10.000000000", b"10.004000000")
        + _SAMPLE.replace(b"5/6 ", b"5/7 ").replace(b"start_thread", b"deep_frame")
        + b"my app 5/6   10.005000000: PERF_RECORD_SWITCH IN\n"  # 1 ms
        + b"other 9/9   10.010000000: PERF_RECORD_SWITCH IN\n"  # the record's last event
    )
    stacks, stats = _fold_text(text, period=3)
    assert stacks == {
        # (2 ms + 1 ms) x 3: one switch-out in 3 had a stack.
        "my_app;start_thread;[libx.so];wait;__schedule": 9000,
        # tid 7 (off at 10.000) never came back: counted up to the end (10 ms x 3), and
        # its stack was cut short.
        "my_app;deep_frame;[libx.so];wait;__schedule": 30000,
    }
    assert (stats.stacks, stats.matched, stats.unmatched, stats.open_at_end) == (4, 2, 1, 1)
    assert stats.cut_short == 1


def test_perf_argv_and_period() -> None:
    argv = perf_argv(pids=[9, 7], output="/d/perf.data", duration_s=2.5, stack_bytes=8192,
                     period=4)  # fmt: skip
    assert argv == [
        "perf", "record", "-e", "sched:sched_switch", "-c", "4", "--no-period", "--switch-events",
        "--call-graph", "dwarf,8192", "-p", "7,9", "-o", "/d/perf.data", "--", "sleep", "2.5",
    ]  # fmt: skip
    assert dwarf_period(0, max_stacks_per_s=1000) == 1
    assert dwarf_period(1000, max_stacks_per_s=1000) == 1
    assert dwarf_period(250_000, max_stacks_per_s=1000) == 250
    # 300 s x 8 KiB stacks: 256 MiB allow ~109 a second.
    assert dwarf_period(500, max_stacks_per_s=1000, duration_s=300) == 5
    assert dwarf_period(500, max_stacks_per_s=1000, duration_s=10) == 1
    assert perf_script_argv("x")[-2:] == ["-F", "comm,pid,tid,time,event,ip,sym,dso"]
    assert "--no-inline" in perf_script_argv("x") and "--show-switch-events" in perf_script_argv(
        "x"
    )


def _offcpu_plan(targets: list[TargetFacts], **kw: object) -> Plan:
    why = kw.pop("why", None)
    return plan(ProfileRequest(type="off-cpu", duration_s=2, **kw), targets=targets,  # type: ignore[arg-type]
                target="t", limits=LIMITS, output=Path("/d/perf.data.part"), pid_ns=1,
                offcpu_dwarf_unavailable=why)  # type: ignore[arg-type]  # fmt: skip


def test_plan_chooses_unwinding_per_target_and_says_why() -> None:
    p = _offcpu_plan([LIBC])
    assert p.call_graph == "dwarf" and p.argv[:2] == ["perf", "record"] and not p.bpftrace_argv
    assert p.argv[p.argv.index("-o") + 1] == "/d/perf.data.part" and p.program is None
    (c,) = p.unwinding
    assert (c.call_graph, c.tool) == ("dwarf", "perf") and "libc" in c.reason
    # Go: frame pointers and no libc: bpftrace, cheaper.
    p = _offcpu_plan([GO])
    assert p.call_graph == "fp" and p.argv == [] and p.bpftrace_argv[0] == "bpftrace"
    assert "Go keeps frame pointers" in p.unwinding[0].reason
    # Both kinds: both recorders, each with its own pids.
    p = _offcpu_plan([GO, LIBC])
    assert p.argv[p.argv.index("-p") + 1] == "7" and "@__t[8] = 1;" in (p.program or "")
    assert "per target" in p.call_graph_reason
    # Forced either way.
    assert _offcpu_plan([GO], call_graph="dwarf").argv[0] == "perf"
    assert _offcpu_plan([LIBC], call_graph="fp").argv == []


def test_plan_falls_back_to_frame_pointers_and_says_so() -> None:
    p = _offcpu_plan([LIBC], why="tracefs is not mounted and mounting it needs CAP_SYS_ADMIN")
    assert p.call_graph == "fp" and p.argv == [] and p.bpftrace_argv
    assert "CAP_SYS_ADMIN" in p.unwinding[0].reason and "missing" in p.unwinding[0].reason
    with pytest.raises(Unavailable, match="call_graph fp or auto"):
        _offcpu_plan([LIBC], call_graph="dwarf", why="no tracefs")


def test_plan_bounds_the_dwarf_cost_by_the_switch_rate() -> None:
    busy = replace(LIBC, switches_per_s=120_000.0)
    p = _offcpu_plan([busy])
    assert p.dwarf_period == 120 and p.argv[p.argv.index("-c") + 1] == "120"
    assert "one switch-out in 120" in p.call_graph_reason
    assert "of a core" not in p.call_graph_reason  # 4.8%: not worth a word
    # perf's floor at a high rate, said with the way out.
    reason = _offcpu_plan([replace(LIBC, switches_per_s=500_000.0)]).call_graph_reason
    assert "about 20% of a core" in reason and "call_graph fp" in reason, reason
    assert _offcpu_plan([replace(LIBC, switches_per_s=200.0)]).dwarf_period == 1


def test_plan_for_python_says_what_names_its_functions() -> None:
    py = TargetFacts(pid=9, comm="python3.12", container="app", runtime="python",
                     runtime_version="3.12.1")  # fmt: skip
    p = _offcpu_plan([py])
    assert p.call_graph == "dwarf" and "time_sleep" in p.unwinding[0].reason
    assert any("PYTHONPERFSUPPORT=1" in r for r in p.unresolved), p.unresolved
    assert not any("py-spy" in r for r in p.unresolved), p.unresolved  # not for off-CPU
