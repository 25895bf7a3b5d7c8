"""Unit tests of reading perf record's stderr (texts recorded from perf 6.1 here)."""

from __future__ import annotations

from agent import _proc
from agent.profiling.perf_record import parse_stderr

TARGET_EXITED = """[ perf record: Woken up 1 times to write data ]
[ perf record: Captured and wrote 0.009 MB /tmp/t1.data (78 samples) ]
Terminated
"""

THROTTLED = (
    "warning: Maximum frequency rate (100000 Hz) exceeded, "
    "throttling from 500000 Hz to 100000 Hz.\n"
    """         The limit can be raised via /proc/sys/kernel/perf_event_max_sample_rate.
[ perf record: Woken up 3 times to write data ]
[ perf record: Captured and wrote 0.585 MB /tmp/x.data (4638 samples) ]
"""
)

ZOMBIE = """Error:
The sys_perf_event_open() syscall returned with 3 (No such process) for event (cpu-clock:pppH).
/bin/dmesg | grep -i perf may provide additional information.
"""

LOST = """[ perf record: Woken up 40 times to write data ]
Processed 120000 events and lost 3 chunks!

Check IO/CPU overload!

[ perf record: Captured and wrote 12.1 MB perf.data (118000 samples) ]
"""


def test_samples_and_noise() -> None:
    assert parse_stderr(TARGET_EXITED) == (78, 0, [])


def test_warnings_kept() -> None:
    samples, lost, warnings = parse_stderr(THROTTLED)
    assert samples == 4638 and lost == 0
    assert warnings[0].startswith("warning: Maximum frequency rate")


def test_failure_has_no_samples() -> None:
    samples, _, warnings = parse_stderr(ZOMBIE)
    assert samples is None and any("No such process" in w for w in warnings)


def test_lost_chunks() -> None:
    samples, lost, warnings = parse_stderr(LOST)
    assert samples == 118000 and lost == 3
    assert "Check IO/CPU overload!" in warnings


# Idle targets: perf leaves the "(N samples)" out (recorded here: -p of sleeping processes).
IDLE = """[ perf record: Woken up 1 times to write data ]
[ perf record: Captured and wrote 0.009 MB /tmp/agtest/profile/a7d0f616e214/perf.data.part ]
"""


def test_idle_targets_are_zero_samples_not_a_failure() -> None:
    assert parse_stderr(IDLE) == (0, 0, [])


# perf 6.1's start race (tests/agent/test_perf_start_race_integration.py provokes it):
# status 255, and on stderr nothing, or only its notes on threads gone before it opened them.
RACED_QUIET = ""
RACED_WITH_NOTES = """WARNING: Ignored open failure for pid 4043
WARNING: Ignored open failure for pid 4044
"""


def test_the_start_race_is_told_from_real_failures() -> None:
    assert _proc.perf_lost_a_thread_at_start(255, RACED_QUIET)
    assert _proc.perf_lost_a_thread_at_start(255, RACED_WITH_NOTES)
    # perf said why: not the race, not restarted
    assert not _proc.perf_lost_a_thread_at_start(255, ZOMBIE)
    # its workload ended (143), or it succeeded: never the race
    assert not _proc.perf_lost_a_thread_at_start(143, "")
    assert not _proc.perf_lost_a_thread_at_start(0, TARGET_EXITED)
