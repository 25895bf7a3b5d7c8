"""Memory profiles' pure parts: the bpftrace program, its output -> folded stacks (the
caller recovered from the return address), the plan, and pprof with two sample types
(decoded by Datadog's pprof-format, as the CPU profiles' are)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from agent.errors import Conflict, Invalid
from agent.profiling import alloc, memplan
from agent.profiling.planner import ProfileRequest
from tests.profiling_pure import npm_tools
from tests.profiling_pure.support import GLIBC, memory_plan
from tracecar_formats.memprofile import to_memory_pprof

LIBC = alloc.Probe("/proc/7/root/usr/lib/libc.so.6", ("malloc", "calloc", "free"))


def test_program_probes_each_function_with_the_settings_inlined() -> None:
    text = alloc.program(
        kind="leak", pids=[7, 9], probes=[LIBC], pid_ns=4026531836, duration_s=2.5, period=8
    )
    assert "uprobe:/proc/7/root/usr/lib/libc.so.6:malloc" in text
    assert "uretprobe:/proc/7/root/usr/lib/libc.so.6:calloc" in text
    assert "uprobe:/proc/7/root/usr/lib/libc.so.6:free" in text
    assert "realloc" not in text  # not defined by that object: no probe
    assert "@__t[7] = 1; @__t[9] = 1;" in text and "ns.inum == 4026531836" in text
    assert "rand % (uint64)8" in text and "$$" not in text
    assert 'reg("sp")' in text  # the caller, read at entry
    assert "interval:ms:2500 { exit(); }" in text
    assert alloc.ATTACHED in text
    alloc_text = alloc.program(kind="alloc", pids=[7], probes=[LIBC], pid_ns=1, duration_s=1)
    assert (
        "@bytes[" in alloc_text and "uprobe:/proc/7/root/usr/lib/libc.so.6:free" not in alloc_text
    )
    assert alloc.argv(alloc_text, pids=[7])[:5] == ["bpftrace", "-f", "json", "-p", "7"]


_STACK = "\n\t7f00000a0930 __GI___libc_malloc+0 (libc)\n\t55000000128b main+103 (/app)\n"
_OUT_ALLOC = "\n".join(
    json.dumps(x)
    for x in (
        {"type": "attached_probes", "data": {"probes": 9}},
        {"type": "printf", "data": alloc.ATTACHED},
        {"type": "map", "data": {"@calls": {"7": 100}}},
        {"type": "map", "data": {"@total": {"7": 64000}}},
        {"type": "map", "data": {"@sampled": {"7": 6}}},
        {"type": "map", "data": {"@bytes": {f"7,{0x55000000120A},{_STACK},1": 96000}}},
        {"type": "map", "data": {"@count": {f"7,{0x55000000120A},{_STACK},1": 96}}},
    )
)


def _names(pid: int, addrs: list[int]) -> list[str]:
    table = {0x55000000120A - 1: "leaky_work", 0x55000000128B - 1: "main"}
    return [table.get(a, "[unknown]") for a in addrs]


def test_alloc_output_folds_with_the_caller_above_the_allocator() -> None:
    out = alloc.parse_output(_OUT_ALLOC)
    assert out.attached_probes == 9
    assert out.stats[7].calls == 100 and out.stats[7].bytes == 64000 and out.stats[7].sampled == 6
    by_bytes, by_count = alloc.fold(out.sites, names=_names, comms={7: "my app"})
    # The walk from malloc's entry skipped leaky_work: it is put back from [sp].
    assert by_bytes == {"my_app;main;leaky_work;malloc": 96000}
    assert by_count == {"my_app;main;leaky_work;malloc": 96}


def test_leak_output_sums_outstanding_allocations_by_stack() -> None:
    keys = {f"7,{a}": None for a in (0x1000, 0x2000, 0x3000)}
    lines = [
        {"@__lsz": dict.fromkeys(keys, 8000)},
        {"@__lw": dict.fromkeys(keys, 16)},
        {"@__lra": dict.fromkeys(keys, 0x55000000120A)},
        {"@__lst": dict.fromkeys(keys, _STACK)},
        {"@__lk": dict.fromkeys(keys, 1)},
        {"@dropped": {"7": 5}},
        {"@dropped_bytes": {"7": 2500}},
    ]
    text = "\n".join(json.dumps({"type": "map", "data": d}) for d in lines)
    out = alloc.parse_output(text)
    assert out.stats[7].dropped == 5 and out.stats[7].dropped_bytes == 2500
    by_bytes, by_count = alloc.fold(out.sites, names=_names, comms={7: "app"})
    assert by_bytes == {"app;main;leaky_work;malloc": 24000}
    assert by_count == {"app;main;leaky_work;malloc": 48}


def _facts(allocator: alloc.Allocator | None, why: str = "") -> memplan.MemoryTargetFacts:
    return memplan.MemoryTargetFacts(7, "app", "native", allocator, why)


def test_plan_says_the_sampling_and_what_each_runtime_shows() -> None:
    p = memory_plan(ProfileRequest(type="leak", pid=7, sample_period=4), [_facts(GLIBC)])
    assert p.memory is not None and p.memory.period == 4 and p.pids == [7]
    assert p.memory.sampling.startswith("every allocation of 65536 bytes or more")
    assert p.memory.targets[0].allocator == "glibc" and p.argv == []
    assert p.program and p.bpftrace_argv[0] == "bpftrace"
    go = memplan.MemoryTargetFacts(8, "srv", "go", None, "a Go program without cgo: ...")
    p = memory_plan(ProfileRequest(type="alloc", pids=[7, 8]), [_facts(GLIBC), go])
    assert p.pids == [7] and "pid 8 (srv): a Go program" in p.memory.skipped[0]  # type: ignore[union-attr]
    assert "not with malloc" in p.memory.targets[1].sees  # type: ignore[union-attr]


def test_plan_refuses_what_does_not_apply() -> None:
    with pytest.raises(Conflict, match="no allocator symbols"):
        memory_plan(ProfileRequest(type="alloc", pid=7), [_facts(None, "no allocator symbols: x")])
    for bad in (
        {"frequency_hz": 99},
        {"profiler": "perf"},
        {"call_graph": "dwarf"},
        {"max_outstanding": 5},
    ):
        with pytest.raises(Invalid):
            memory_plan(ProfileRequest(type="alloc", pid=7, **bad), [_facts(GLIBC)])  # type: ignore[arg-type]
    with pytest.raises(Invalid, match="sample_period"):
        memory_plan(ProfileRequest(type="cpu", pid=7, sample_period=3), [])


@pytest.mark.parametrize(
    ("code", "want"),
    [
        # glibc 2.36's free (Debian bookworm): test %rdi,%rdi; je
        ("4885ff0f84c7000000", (3, ("test %rdi,%rdi",))),
        # a CET build (endbr64 first), then the same test
        ("f30f1efa4885ff7405", (7, ("endbr64", "test %rdi,%rdi"))),
        # push %rbp (emulated by the kernel): nothing to gain, the entry stays
        ("554889e5", (0, ())),
        # test %rsi,%rsi is not in the table (a different register): the entry stays
        ("4885f6", (0, ())),
        ("", (0, ())),
    ],
)
def test_entry_skip_takes_only_known_instructions(
    code: str, want: tuple[int, tuple[str, ...]]
) -> None:
    assert alloc.entry_skip(bytes.fromhex(code)) == want


def test_leak_probes_free_past_its_test_when_bpftrace_can() -> None:
    libc = dataclasses.replace(
        GLIBC, entry_skips=(("free", 3, "test %rdi,%rdi"),), functions=("malloc", "free")
    )
    facts = [_facts(libc)]
    mem, text = memplan.plan_memory(
        kind="leak", targets=facts, pid_ns=1, duration_s=1, period=16, probe_offsets=True
    )
    assert "uprobe:/proc/7/root/usr/lib/libc.so.6:free+3" in text
    assert "libc.so.6:malloc+" not in text  # the allocators' entries: emulated there
    assert any("past its first instructions" in n and "free+3" in n for n in mem.notes), mem.notes
    # Without offset support: the entry, and the note says why it costs what it does.
    mem, text = memplan.plan_memory(
        kind="leak", targets=facts, pid_ns=1, duration_s=1, period=16, probe_offsets=False
    )
    assert "libc.so.6:free+" not in text and "uprobe:/proc/7/root/usr/lib/libc.so.6:free" in text
    assert any("bfd: no" in n and "single-stepped" in n for n in mem.notes), mem.notes
    # An alloc profile probes no free at all.
    _mem, text = memplan.plan_memory(
        kind="alloc", targets=facts, pid_ns=1, duration_s=1, period=16, probe_offsets=True
    )
    assert ":free" not in text
    # The whole planner threads the capability through.
    p = memory_plan(ProfileRequest(type="leak", pid=7), facts, bpftrace_offsets=True)
    assert p.program is not None and ":free+3" in p.program


def test_one_probe_per_file_whatever_the_target() -> None:
    other = alloc.Allocator(
        pid=9,
        flavor="glibc",
        path="/usr/lib/libc.so.6",
        host_path="/proc/9/root/usr/lib/libc.so.6",
        functions=("malloc", "free"),
        identity=(1, 2),  # the same inode: probed once, or each call counts twice
    )
    _mem, text = memplan.plan_memory(
        kind="alloc",
        targets=[_facts(GLIBC), memplan.MemoryTargetFacts(9, "b", "native", other)],
        pid_ns=1,
        duration_s=1,
        period=16,
    )
    assert "/proc/9/root" not in text and "@__t[9] = 1" in text


@pytest.mark.parametrize("inuse", [False, True])
def test_memory_pprof_decodes_with_both_sample_types(
    tools: None, tmp_path: Path, inuse: bool
) -> None:
    by_bytes = {"app;main;leaky_work;malloc": 16000, "app;main;balanced_work;malloc": 128000}
    by_count = {"app;main;leaky_work;malloc": 32, "app;main;balanced_work;malloc": 128}
    blob = to_memory_pprof(by_bytes, by_count, inuse=inuse, duration_ns=10**9, time_ns=5)
    got = npm_tools.decode_pprof(blob, tmp_path)
    prefix = "inuse" if inuse else "alloc"
    assert got["sampleType"] == [[f"{prefix}_objects", "count"], [f"{prefix}_space", "bytes"]]
    assert got["periodType"] == ["space", "bytes"]
    assert got["defaultSampleType"] == f"{prefix}_space"
    assert got["stacks"] == {k: [by_count[k], by_bytes[k]] for k in by_bytes}
