"""Java allocation profiles by Java method, the pure parts: async-profiler's commands,
its collapsed output folded under [java], what the plan says, and the agent's own
bookkeeping of the files it leaves in a JVM's /tmp (on a directory of this test's)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from agent.profiling import _asyncprof, javalloc, memplan
from agent.profiling.planner import ProfileRequest, plan
from tests.profiling_pure.support import GLIBC, LIMITS

# async-profiler 4.6's `dump,collapsed,total,dot` of the integration test's workload
# (OpenJDK 17), as it wrote it; and the same samples without `total`.
BY_BYTES = """\
Chain.main;Chain.smallAllocator;byte[] 20971480
Chain.main;Chain.bigAllocator;byte[] 9659463688
"""
BY_COUNT = """\
Chain.main;Chain.smallAllocator;byte[] 40
Chain.main;Chain.bigAllocator;byte[] 18424
"""
TOKEN = "0123456789abcdef"


def test_collapsed_output_folds_under_the_java_frame() -> None:
    stacks = javalloc.parse_collapsed(BY_BYTES)
    assert stacks == {
        "Chain.main;Chain.smallAllocator;byte[]": 20971480,
        "Chain.main;Chain.bigAllocator;byte[]": 9659463688,
    }
    folded = javalloc.fold(stacks, comm="java app")
    assert folded["java_app;[java];Chain.main;Chain.bigAllocator;byte[]"] == 9659463688
    assert len(folded) == 2
    assert javalloc.fold({"a;b": 1}, comm="") == {"java;[java];a;b": 1}


def test_collapsed_lines_that_are_not_stacks_are_skipped() -> None:
    text = (
        "Chain.main;java.util.ArrayList.grow;java.lang.Object[] 7\n"
        "\n"
        "no count here\n"
        "Chain.main;Chain.x;int[] 0\n"
        "Chain.main;Chain$$Lambda$14.0x0000000800c0b000.run;byte[] 3\n"
        "Chain.main;java.util.ArrayList.grow;java.lang.Object[] 5\n"
    )
    assert javalloc.parse_collapsed(text) == {
        "Chain.main;java.util.ArrayList.grow;java.lang.Object[]": 12,
        "Chain.main;Chain$$Lambda$14.0x0000000800c0b000.run;byte[]": 3,
    }


def test_commands_name_only_files_of_this_profile_in_the_jvm_tmp() -> None:
    n = javalloc.Names(TOKEN)
    start = javalloc.start_args(n, interval=256 * 1024, timeout_s=370)
    assert start.split(",") == [
        "start",
        "event=alloc",
        "alloc=262144",
        "timeout=370",
        f"file=/tmp/tracecar-async-profiler-{TOKEN}-bytes.collapsed",
        "collapsed",
        "total",
        "dot",
        f"log=/tmp/tracecar-async-profiler-{TOKEN}-start.log",
    ]
    assert javalloc.stop_args(n) == f"stop,log=/tmp/tracecar-async-profiler-{TOKEN}-stop.log"
    assert javalloc.dump_args(n, weight="bytes").startswith(
        f"dump,file=/tmp/{n.bytes_out},collapsed,total,dot,log=/tmp/"
    )
    last = javalloc.dump_args(n, weight="count", last=True)
    assert last == f"dump,file=/tmp/{n.count_out},collapsed,samples,dot,log=/dev/null"
    assert javalloc.start_args(n, interval=1, timeout_s=0).split(",")[2:4] == [
        "alloc=1024",
        "timeout=1",
    ]
    for name in (n.library, n.bytes_out, n.count_out, n.log("stop")):
        assert javalloc.token_of(name) == TOKEN
    assert javalloc.token_of("tracecar-async-profiler-xyz.so") is None
    assert javalloc.token_of("perf-12.map") is None
    for bad in ("", "ABCDEF0123456789", "0123/../x", "0123456789abcdef,file=/etc/x"):
        with pytest.raises(ValueError):
            javalloc.Names(bad)


def test_sampling_is_said_with_its_unit() -> None:
    said = javalloc.sampling(512 * 1024)
    assert "one sample per 512 KiB" in said and "counts samples, not allocations" in said
    assert "2 MiB" in javalloc.sampling(2 << 20) and "1500 bytes" in javalloc.sampling(1500)


def _memory_plan(kind: str) -> memplan.MemoryPlan:
    facts = [
        memplan.MemoryTargetFacts(7, "java", "java", GLIBC),
        memplan.MemoryTargetFacts(8, "app", "native", GLIBC),
    ]
    p = plan(
        ProfileRequest(type=kind, pid=7),  # type: ignore[arg-type]
        targets=[],
        target="pid 7",
        limits=LIMITS,
        output=Path("perf.data"),
        pid_ns=1,
        memory_targets=facts,
    )
    assert p.memory is not None
    return p.memory


def test_plan_says_how_java_methods_are_sampled() -> None:
    lib = Path("/opt/tracecar/lib/libasyncProfiler.so")
    mem = _asyncprof.describe(_memory_plan("alloc"), lib=lib, why_not=None, interval=512 * 1024)
    java = mem.java_methods
    assert java is not None and java.available and java.pids == [7]
    assert java.interval_bytes == 524288 and java.library == str(lib)
    assert any(n.startswith("Java targets (7): async-profiler's alloc mode") for n in mem.notes)
    assert "async-profiler" in mem.targets[0].sees
    assert "async-profiler" in memplan.RUNTIME_NOTES["java"]
    assert "JFR" not in memplan.RUNTIME_NOTES["java"]
    # Without the library: said, and the native view still runs.
    why = "async-profiler's library is not at /x.so"
    mem = _asyncprof.describe(_memory_plan("alloc"), lib=Path("/x.so"), why_not=why, interval=1)
    assert mem.java_methods is not None and not mem.java_methods.available
    assert mem.java_methods.reason == why
    assert any("no Java methods (async-profiler's library" in n for n in mem.notes)
    # A leak profile: the Java heap is not the C allocator's; nothing Java-specific runs.
    leak = _memory_plan("leak")
    assert _asyncprof.describe(leak, lib=lib, why_not=None, interval=1) is leak


def test_library_and_availability(tmp_path: Path) -> None:
    so = tmp_path / "libasyncProfiler.so"
    assert _asyncprof.library(so) == so
    if _asyncprof._proc.which("jattach") is not None:
        assert "is not at" in str(_asyncprof.available(so))
        so.write_bytes(b"\x7fELF")
        assert _asyncprof.available(so) is None


def test_leftovers_are_swept_and_a_run_removes_only_its_own(tmp_path: Path) -> None:
    ours, other, stale = javalloc.Names(TOKEN), javalloc.Names("aa" * 8), javalloc.Names("bb" * 8)
    for n in (ours, other, stale):
        (tmp_path / n.bytes_out).write_text("x 1\n")
        (tmp_path / n.log("start")).write_text("Profiling started\n")
    (tmp_path / "app.txt").write_text("the app's own")
    _asyncprof._ACTIVE.update({ours.token, other.token})
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _asyncprof._sweep(fd)  # the stale one's files: no profile in flight owns them
        assert sorted(p.name for p in tmp_path.iterdir() if stale.token in p.name) == []
        run = _asyncprof.Run(pid=1, names=ours, tmp_fd=os.dup(fd))
        assert _asyncprof._read(run.tmp_fd, ours.bytes_out) == "x 1\n"
        _asyncprof._close(run)
        assert run.tmp_fd is None and ours.token not in _asyncprof._ACTIVE
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == sorted(["app.txt", other.bytes_out, other.log("start")])
    finally:
        os.close(fd)
        _asyncprof._ACTIVE.discard(other.token)


def test_java_stacks_join_both_views_and_each_jvm_is_said() -> None:
    from agent.profiling._alloc import _java_merge

    def run(pid: int, token: str, **kw: object) -> _asyncprof.Run:
        return _asyncprof.Run(pid=pid, names=javalloc.Names(token * 8), started=True, **kw)  # type: ignore[arg-type]

    stacks = javalloc.fold(javalloc.parse_collapsed(BY_BYTES), comm="java")
    samples = javalloc.fold(javalloc.parse_collapsed(BY_COUNT), comm="java")
    runs = [
        run(7, "aa", stacks_bytes=stacks, stacks_count=samples, reused="/tmp/x.so (deleted)"),
        run(
            8,
            "bb",
            stacks_bytes={"j;[java];A.b;int[]": 524288},
            exited=True,
            message="the JVM exited during the profile: ...",
        ),
        _asyncprof.Run(
            pid=9,
            names=javalloc.Names("cc" * 8),
            message="async-profiler is already running in this JVM",
        ),
    ]
    by_bytes = {"app;main;malloc": 100}
    by_count = {"app;main;malloc": 1}
    summary: dict[str, object] = {"allocated_bytes_estimated": 100}
    notes = _java_merge(runs, by_bytes, by_count, None, summary)
    assert by_bytes["java;[java];Chain.main;Chain.bigAllocator;byte[]"] == 9659463688
    assert by_bytes["j;[java];A.b;int[]"] == 524288 and by_bytes["app;main;malloc"] == 100
    assert by_count["java;[java];Chain.main;Chain.bigAllocator;byte[]"] == 18424
    assert summary["java"] == {
        "7": {"bytes_estimated": 9680435168, "samples": 18464},
        "8": {"bytes_estimated": 524288, "samples": 0},
    }
    assert summary["allocated_bytes_estimated"] == 100  # the C allocator's, untouched
    assert "(18464 samples, 9680435168 bytes estimated; driven through the copy" in notes[0]
    assert (
        notes[1].startswith("pid 8 (java): Java methods under [java]") and "samples" not in notes[1]
    )
    assert notes[2] == "pid 8 (java): Java methods: the JVM exited during the profile: ..."
    assert (
        notes[3] == "pid 9 (java): no Java methods: async-profiler is already running in this JVM"
    )


def test_a_jvm_tmp_that_is_a_symbolic_link_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent is root with SYS_PTRACE: a /tmp pointing through the app's /proc could
    lead it into another container's files. It is refused, and nothing is written."""
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / "tmp").symlink_to(elsewhere)
    monkeypatch.setattr(_asyncprof.procfs, "proc_root", lambda pid: root)
    run = _asyncprof.new_run(os.getpid())
    lib = tmp_path / "libasyncProfiler.so"
    lib.write_bytes(b"\x7fELF")
    asyncio.run(_asyncprof.start(run, lib=lib, interval=1024, timeout_s=1))
    assert not run.started and run.tmp_fd is None, run
    assert run.message == "the JVM's /tmp cannot be used (a symbolic link, not followed)"
    assert list(elsewhere.iterdir()) == [] and run.names.token not in _asyncprof._ACTIVE
