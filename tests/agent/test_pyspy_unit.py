# ruff: noqa: E501  (py-spy's lines are kept verbatim)
"""py-spy's output read (tracecar_formats.pyspy) and the profiler choice (the planner).

The py-spy lines below were printed by py-spy 0.4.3 on this machine
(``record --format raw --threads --full-filenames``, CPython 3.12 and 3.11, and
``--native`` for the unresolved native frame), copied verbatim.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import Conflict, Invalid, Unavailable
from agent.profiling.planner import Limits, ProfileRequest, TargetFacts, plan
from tracecar_formats import pyspy

RAW_312 = """\
thread (6149);<module> (/tmp/busy.py:11);main (/tmp/busy.py:10);hot (/tmp/busy.py:4) 33
thread (6149);<module> (/tmp/busy.py:11);main (/tmp/busy.py:10);cold (/tmp/busy.py:7);hot (/tmp/busy.py:4) 65
"""
RAW_311 = """\
thread (26920): MainThread;<module> (/tmp/busy.py:11);main (/tmp/busy.py:10);hot (/tmp/busy.py:4) 36
"""
RAW_NATIVE = """\
0x7fc17de4524a (libc.so.6);<module> (busy.py:11);main (busy.py:10);hot (busy.py:4);__tls_get_addr (ld-linux-x86-64.so.2) 6
"""
STDOUT = """\
py-spy> Sampling process 99 times a second. Press Control-C to exit.


py-spy> Stopped sampling because Control-C pressed
py-spy> Wrote raw flamegraph data to '/tmp/o8.txt'. Samples: 174 Errors: 3
py-spy> You can use the flamegraph.pl script from https://github.com/brendangregg/flamegraph to generate a SVG
"""

LIMITS = Limits(
    default_duration_s=10, max_duration_s=300, default_frequency_hz=99,
    max_frequency_hz=999, timeout_slack_s=60,
)  # fmt: skip
PY = TargetFacts(
    pid=7, comm="python3.12", container="app", runtime="python", runtime_version="3.12"
)
C = TargetFacts(pid=9, comm="burner", container="app", runtime="native")


def test_fold_roots_stacks_at_the_process_name() -> None:
    stacks = pyspy.fold(RAW_312, comm="python3.12", pid=7)
    assert stacks == {
        "python3.12;<module> (/tmp/busy.py:11);main (/tmp/busy.py:10);hot (/tmp/busy.py:4)": 33,
        "python3.12;<module> (/tmp/busy.py:11);main (/tmp/busy.py:10);cold (/tmp/busy.py:7);"
        "hot (/tmp/busy.py:4)": 65,
    }


def test_fold_pid_and_tid_as_stackcollapse_spells_them() -> None:
    by_pid = pyspy.fold(RAW_312, comm="python3.12", pid=7, with_pid=True)
    assert all(k.startswith("python3.12-7;") for k in by_pid)
    by_tid = pyspy.fold(RAW_311, comm="python3.11", pid=7, with_pid=True, with_tid=True)
    assert list(by_tid) == [
        "python3.11-7/26920;<module> (/tmp/busy.py:11);main (/tmp/busy.py:10);hot (/tmp/busy.py:4)"
    ]


def test_fold_names_unresolved_native_frames_as_the_collapser_does() -> None:
    (stack,) = pyspy.fold(RAW_NATIVE, comm="py", pid=1)
    assert stack.startswith("py;[libc.so.6];<module> (busy.py:11)")
    assert stack.endswith("__tls_get_addr (ld-linux-x86-64.so.2)")


def test_summary_counts_samples_and_drops() -> None:
    summary = pyspy.parse_stderr(STDOUT)
    assert (summary.samples, summary.errors, summary.exited) == (174, 3, False)
    assert summary.warnings == []
    failed = pyspy.parse_stderr("Error: Failed to find python version from target process")
    assert failed.samples is None and failed.warnings


def _plan(req: ProfileRequest, targets: list[TargetFacts], *, pyspy_path: str | None = "/py-spy"):  # type: ignore[no-untyped-def]
    return plan(
        req, targets=targets, target="t", limits=LIMITS, output=Path("/d/perf.data.part"),
        pyspy=pyspy_path,
    )  # fmt: skip


def test_auto_gives_python_to_py_spy_and_the_rest_to_perf() -> None:
    p = _plan(ProfileRequest(), [PY, C])
    assert [(c.pid, c.profiler) for c in p.profilers] == [(7, "py-spy"), (9, "perf")]
    assert "-p" in p.argv and p.argv[p.argv.index("-p") + 1] == "9"
    (run,) = p.py_spy
    assert run.argv[:4] == ["/py-spy", "record", "--pid", "7"]
    assert "--nonblocking" in run.argv and "--native" not in run.argv
    assert run.output == "/d/py-spy-7.txt"


def test_python_only_needs_no_perf() -> None:
    p = _plan(ProfileRequest(python_native=True), [PY])
    assert p.argv == [] and "--native" in p.py_spy[0].argv
    assert "--nonblocking" not in p.py_spy[0].argv


def test_forced_profilers_and_their_errors() -> None:
    p = _plan(ProfileRequest(profiler="perf"), [PY, C])
    assert p.py_spy == [] and {c.profiler for c in p.profilers} == {"perf"}
    with pytest.raises(Conflict, match=r"pid 9 .burner. is native"):
        _plan(ProfileRequest(profiler="py-spy"), [PY, C])
    with pytest.raises(Unavailable, match="py-spy is not installed"):
        _plan(ProfileRequest(profiler="py-spy"), [PY], pyspy_path=None)
    with pytest.raises(Invalid, match="python_native"):
        _plan(ProfileRequest(profiler="perf", python_native=True), [PY])
    with pytest.raises(Invalid, match="off-cpu"):
        _plan(ProfileRequest(type="off-cpu", profiler="py-spy"), [PY])


def test_without_py_spy_python_goes_to_perf_and_says_why() -> None:
    p = _plan(ProfileRequest(), [PY], pyspy_path=None)
    (choice,) = p.profilers
    assert choice.profiler == "perf" and "py-spy is not installed" in choice.reason
    assert p.argv and p.py_spy == []
