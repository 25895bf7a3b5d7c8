"""Memory, pure parts: what the kernel's smaps and the JVM's jcmd answers say, the
pymalloc reader's line, the .hprof size estimate, the recorder ring's RSS, and the
RSS trigger conditions (the real tools are in test_memory_snapshots_integration.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from agent import procfs
from agent.dumps._service import hprof_estimate
from agent.errors import Invalid
from agent.memory import _gdbscript, _parse, _pymalloc
from agent.memory._model import ClassHistogram, HistogramEntry
from agent.profiling import Trigger, TriggerRequest, Triggers
from agent.profiling._flight_ring import RSS_ENTRY_BYTES, ProcessMeta, Ring, rss_trends

KB = 1024
MI = 1 << 20

ROLLUP = """55b6ca950000-7ffc62abe000 ---p 00000000 00:00 0                          [rollup]
Rss:              102400 kB
Pss:               90000 kB
Pss_Dirty:         80000 kB
Pss_Anon:          80000 kB
Pss_File:          10000 kB
Pss_Shmem:             0 kB
Shared_Clean:      20000 kB
Shared_Dirty:          0 kB
Private_Clean:      2400 kB
Private_Dirty:     80000 kB
Referenced:       102400 kB
Anonymous:         80000 kB
Swap:               1024 kB
SwapPss:             512 kB
Locked:                0 kB
"""

SMAPS = """55bc1c35d000-55bc1c35f000 r--p 00000000 fe:00 247278                     /usr/bin/app
Size:                  8 kB
Rss:                   8 kB
Pss:                   8 kB
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd mr mw me
55bc1d000000-55bc1d100000 rw-p 00000000 00:00 0                          [heap]
Size:               1024 kB
Rss:                 512 kB
Pss:                 512 kB
Anonymous:           512 kB
Swap:                  0 kB
7f0000000000-7f0004000000 rw-p 00000000 00:00 0
Size:              65536 kB
Rss:               65536 kB
Pss:               65536 kB
Anonymous:         65536 kB
Swap:                 64 kB
7f1000000000-7f1000001000 rw-s 00000000 00:01 1234                       /dev/shm/x (deleted)
Size:                  4 kB
Rss:                   4 kB
Pss:                   2 kB
Anonymous:             0 kB
Swap:                  0 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  32 kB
Pss:                  32 kB
Anonymous:            32 kB
Swap:                  0 kB
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
Size:                  4 kB
Rss:                   0 kB
Pss:                   0 kB
Anonymous:             0 kB
Swap:                  0 kB
"""

HEAP_INFO = """Connected to remote JVM
JVM response code = 0
 garbage-first heap   total 389120K, used 133044K [0x00000000e0000000, 0x0000000100000000)
  region size 1024K, 1 young (1024K), 0 survivors (0K)
 Metaspace       used 74K, committed 320K, reserved 1114112K
  class space    used 3K, committed 128K, reserved 1048576K
"""

SERIAL_HEAP_INFO = """Connected to remote JVM
JVM response code = 0
 def new generation   total 4928K, used 1304K [0x00000000e0000000, 0x00000000e0550000)
  eden space 4416K,  29% used [0x00000000e0000000, 0x00000000e0146000, 0x00000000e0450000)
 tenured generation   total 10944K, used 0K [0x00000000eaaa0000, 0x00000000eb550000)
 Metaspace       used 74K, committed 320K, reserved 1114112K
"""

HISTOGRAM = """Connected to remote JVM
JVM response code = 0
 num     #instances         #bytes  class name (module)
-------------------------------------------------------
   1:          7326       67445504  [B (java.base@17.0.15)
   2:           755         983864  [I (java.base@17.0.15)
   3:          1425         175664  java.lang.Class (java.base@17.0.15)
   4:            10            640  com.example.Cache$Entry
Total          9516       68605672
"""


def test_rollup_totals() -> None:
    t = _parse.rollup(ROLLUP)
    assert t.rss_bytes == 102400 * KB and t.pss_bytes == 90000 * KB
    assert t.anonymous_bytes == 80000 * KB and t.file_bytes == 22400 * KB
    assert (t.swap_bytes, t.swap_pss_bytes) == (1024 * KB, 512 * KB)
    assert t.private_bytes == 82400 * KB and t.shared_bytes == 20000 * KB
    assert (t.pss_anon_bytes, t.pss_file_bytes, t.pss_shmem_bytes) == (80000 * KB, 10000 * KB, 0)


def test_rollup_of_an_old_kernel_or_a_zombie() -> None:
    old = "\n".join(ln for ln in ROLLUP.splitlines() if not ln.startswith("Pss_"))
    t = _parse.rollup(old)
    assert t.pss_anon_bytes is None and t.rss_bytes == 102400 * KB
    empty = _parse.rollup("")
    assert empty.rss_bytes == 0 and empty.file_bytes == 0


def test_mappings_kinds_and_the_largest() -> None:
    maps = _parse.mappings(SMAPS)
    assert [m.kind for m in maps] == ["file", "heap", "anon", "shmem", "stack", "special"]
    assert maps[0].path == "/usr/bin/app" and maps[2].path == ""
    assert maps[2].size_bytes == 64 * MI and maps[2].swap_bytes == 64 * KB
    top = _parse.largest(maps, 2)
    assert [m.kind for m in top] == ["anon", "heap"]
    kinds = {k.kind: k for k in _parse.by_kind(maps)}
    assert kinds["anon"].rss_bytes == 64 * MI and kinds["file"].mappings == 1
    assert _parse.by_kind(maps)[0].kind == "anon"  # biggest first
    # What a snapshot answers: the same, models for the largest only.
    count, kinds_, top_ = _parse.summary(SMAPS, 2)
    assert count == 6 and kinds_ == _parse.by_kind(maps) and top_ == top


def test_heap_info_of_g1_and_serial() -> None:
    heap = _parse.heap_info(HEAP_INFO)
    assert heap.collector == "garbage-first heap"
    assert (heap.committed_bytes, heap.used_bytes) == (389120 * KB, 133044 * KB)
    assert (heap.metaspace_used_bytes, heap.metaspace_committed_bytes) == (74 * KB, 320 * KB)
    assert "Connected" not in heap.text and "region size" in heap.text
    serial = _parse.heap_info(SERIAL_HEAP_INFO)
    assert serial.collector == "def new generation" and serial.used_bytes == 1304 * KB
    with pytest.raises(_parse.ParseError, match="no heap line"):
        _parse.heap_info("Connected to remote JVM\nJVM response code = 0\nUnknown command\n")


def test_class_histogram() -> None:
    h = _parse.class_histogram(HISTOGRAM, pid=7, live=False, top=2)
    assert (h.total_instances, h.total_bytes, h.classes) == (9516, 68605672, 4)
    assert [(e.class_name, e.module) for e in h.entries] == [
        ("[B", "java.base@17.0.15"),
        ("[I", "java.base@17.0.15"),
    ]
    whole = _parse.class_histogram(HISTOGRAM, pid=7, live=True, top=50)
    assert whole.entries[-1].class_name == "com.example.Cache$Entry"
    assert whole.entries[-1].module is None and whole.live
    with pytest.raises(_parse.ParseError, match="no Total line"):
        _parse.class_histogram("Connected to remote JVM\n", pid=7, live=False, top=5)


def test_pymalloc_figures() -> None:
    doc = {
        "version": "3.12", "arenas": 20, "highwater": 21, "allocated_total": 25,
        "arena_bytes": 1048576, "pool_bytes": 16384, "pools": 1248, "walked": 20,
        "blocks_by_size": {"64": 1000, "32": 3000, "512": 0},
    }  # fmt: skip
    a = _parse.pymalloc(doc, top=5)
    assert (a.arenas, a.arenas_highwater, a.arenas_allocated_total) == (20, 21, 25)
    assert a.held_bytes == 20 * MI and a.blocks_in_use == 4000
    assert a.bytes_in_use == 64 * 1000 + 32 * 3000
    assert [c.block_bytes for c in a.size_classes] == [32, 64]  # heaviest first, empty out


def test_layout_line() -> None:
    line = (
        'TRACECAR-PYLAYOUT {"minor": 12, "mgmt": 6647584, "fields": {"arenas": [0, 8]}, '
        '"arena_object_size": 48}'
    )
    assert _parse.layout("noise\n" + line)["mgmt"] == 6647584
    err = 'TRACECAR-PYLAYOUT {"error": "not in this file\'s debug info"}'
    with pytest.raises(_parse.ParseError, match="debug info"):
        _parse.layout(err)
    with pytest.raises(_parse.ParseError, match="no layout"):
        _parse.layout("No symbol table is loaded.")
    with pytest.raises(_parse.ParseError, match="incomplete"):
        _parse.layout('TRACECAR-PYLAYOUT {"minor": 12}')


def test_gdb_reads_the_file_not_the_process() -> None:
    argv = _gdbscript.argv("/usr/bin/gdb", "/proc/42/root/usr/lib/libpython3.12.so", minor=12)
    assert argv[:3] == ["/usr/bin/gdb", "-nx", "-batch"]
    assert "-p" not in argv and "/proc/42/root/usr/lib/libpython3.12.so" in argv
    assert argv[-1].startswith("python _tracecar_layout(12, ")
    # Debug info only: nothing is called, nothing runs in any process.
    assert "call " not in _gdbscript.PROGRAM and "PyRun_" not in _gdbscript.PROGRAM


MAPS = """\
5581a0000000-5581a0001000 r--p 00000000 fe:00 11 /usr/local/bin/python3.12
5581a0001000-5581a0002000 r-xp 00001000 fe:00 11 /usr/local/bin/python3.12
7f10a0000000-7f10a0100000 r--p 00000000 fe:00 12 /usr/local/lib/libpython3.12.so.1.0
7f10a0100000-7f10a0400000 r-xp 00100000 fe:00 12 /usr/local/lib/libpython3.12.so.1.0
7f10b0000000-7f10b0021000 rw-p 00000000 00:00 0
"""


def test_the_interpreter_is_libpython_else_the_executable() -> None:
    lib = _pymalloc.interpreter(MAPS, "/usr/local/bin/python3.12")
    assert lib == _pymalloc.Interpreter("/usr/local/lib/libpython3.12.so.1.0", 0x7F10A0000000)
    static = "\n".join(ln for ln in MAPS.splitlines() if "libpython" not in ln)
    exe = _pymalloc.interpreter(static, "/usr/local/bin/python3.12")
    assert exe == _pymalloc.Interpreter("/usr/local/bin/python3.12", 0x5581A0000000)
    assert _pymalloc.interpreter(static, "/usr/bin/other") is None


def test_load_bias_from_the_elf_header() -> None:
    # A real file: the running interpreter (PIE, or a fixed address when it is not).
    head = _pymalloc.elf_head(Path(sys.executable).resolve())
    assert _pymalloc.first_load_vaddr(head) in (0, 0x400000)
    with pytest.raises(_pymalloc.ReadError, match="not a 64-bit"):
        _pymalloc.first_load_vaddr(b"#!/bin/sh\n")


def test_hprof_estimate_bounds_the_heap() -> None:
    h = ClassHistogram(
        pid=1,
        live=False,
        total_instances=1000,
        total_bytes=64 * MI,
        classes=1,
        entries=[HistogramEntry(rank=1, instances=64, bytes=64 * MI, class_name="[B", module=None)],
    )
    # Measured: 64 MiB of byte arrays made a 67 MiB .hprof (70302375 bytes).
    assert 70302375 <= hprof_estimate(h) <= 100 * MI


# --- the recorder's RSS ----------------------------------------------------------------


def test_ring_keeps_rss_per_second_and_trends() -> None:
    ring = Ring(retain_s=60, max_bytes=1 << 20, frequency_hz=19)
    ring.describe(7, ProcessMeta(comm="app", container="c", runtime="native"))
    for i, mib in enumerate([10, 12, 14, 13, 20]):
        ring.add_sampler(100 + i, {7: {"app;main": 1}} if i % 2 else {}, {7: mib * MI, 8: MI})
    ring.commit(200.0)
    series = ring.rss(100, 105)
    assert series[7] == [(100 + i, m * MI) for i, m in enumerate([10, 12, 14, 13, 20])]
    assert ring.rss(101, 103)[7] == [(101, 12 * MI), (102, 14 * MI)]
    trends = rss_trends(series, ring.meta)
    t = trends[0]
    assert (t.pid, t.comm, t.first_bytes, t.last_bytes, t.min_bytes, t.max_bytes) == (
        7, "app", 10 * MI, 20 * MI, 10 * MI, 20 * MI,
    )  # fmt: skip
    assert t.growth_bytes == 10 * MI and t.mib_per_min == pytest.approx(150.0)
    assert trends[1].pid == 8 and trends[1].mib_per_min == 0.0
    assert ring.latest_rss() == {7: 20 * MI, 8: MI}
    # Each process's RSS counts against the size bound.
    assert ring.size == sum(b.size for b in ring.buckets)
    assert ring.buckets[0].size == 2 * RSS_ENTRY_BYTES


def test_a_tiny_bound_keeps_the_biggest_processes_rss() -> None:
    ring = Ring(retain_s=60, max_bytes=256, frequency_hz=19)
    rss = {pid: pid * MI for pid in range(1, 41)}
    ring.add_sampler(100, {1: {"a;b": 3}}, rss)
    ring.commit(200.0)
    kept = ring.buckets[0].rss
    assert len(kept) == 256 // 4 // RSS_ENTRY_BYTES and max(kept) == 40
    assert ring.size <= 256


def test_an_idle_second_completes_with_its_rss() -> None:
    ring = Ring(retain_s=60, max_bytes=1 << 20, frequency_hz=19)
    ring.add_sampler(100, {}, {7: 5 * MI})
    assert ring.commit(200.0) == 1
    assert ring.window() == (100.0, 101.0) and ring.folded(100, 101) == {}


def test_rss_reader_keeps_files_open_and_forgets_the_gone() -> None:
    reader = procfs.RssReader()
    me = os.getpid()
    first = reader.read(me)
    assert first is not None and first > 0
    assert reader.read(me) and len(reader) == 1
    assert reader.read(4_194_304) is None and len(reader) == 1  # no such process
    child = subprocess.Popen(["sleep", "30"])
    assert reader.read(child.pid) and len(reader) == 2
    child.kill()
    child.wait()
    assert reader.read(child.pid) is None and len(reader) == 1  # gone: its file closed
    reader.keep_only(set())
    assert len(reader) == 0
    reader.close()


# --- RSS triggers --------------------------------------------------------------------


def test_trigger_conditions() -> None:
    triggers = Triggers(cast(Any, None), max_triggers=5)  # refused before any profile

    def create(**body: Any) -> None:
        asyncio.run(triggers.create(TriggerRequest(pid=1, **body)))

    with pytest.raises(Invalid, match=r"exactly one condition.*none was given"):
        create()
    with pytest.raises(Invalid, match="got cpu_percent and rss_mib"):
        create(cpu_percent=50, rss_mib=100)
    with pytest.raises(Invalid, match="rss_mib must be between"):
        create(rss_mib=0.5)
    with pytest.raises(Invalid, match="for_s must be between 1"):
        create(rss_growth_mib_per_min=10, for_s=0.5)
    req = TriggerRequest(pid=1, rss_growth_mib_per_min=10, for_s=30)
    assert req.condition() == "rss_growth"
    assert req.reason() == "rss growth >= 10MiB/min over 30s"
    assert TriggerRequest(pid=1, rss_mib=512).reason() == "rss >= 512MiB for 5s"
    assert TriggerRequest(pid=1, cpu_percent=80).reason() == "cpu >= 80% for 5s"


def test_trigger_view_says_the_condition_and_memory() -> None:
    t = Trigger(id="0123456789ab", request=TriggerRequest(pid=7, rss_mib=64))
    t.rss_bytes = 100 * MI
    view = t.view()
    assert view.condition == "rss" and view.rss_mib_now == 100.0
    assert view.reason == "rss >= 64MiB for 5s" and view.cpu_percent_now is None
