"""Memory snapshots of one process: what the kernel says, and what its runtime says.

Owned here: ``GET /processes/{pid}/memory`` (smaps_rollup and smaps, read in a
thread; then, for a JVM, ``jcmd GC.heap_info`` and ``GC.class_histogram`` through
jattach, and for CPython, its allocator read live from /proc/PID/mem: see
``_pymalloc`` and ``_gdbscript``), the class
histogram on its own, and the figures a Java heap dump's size check uses. A runtime
that cannot answer (no tool, attach disabled, another tracer attached, no debug
info) makes ``runtime_memory.available`` false with the reason; the kernel's
figures are answered whatever happens.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from agent import _proc, procfs
from agent.errors import Conflict, Invalid, Unavailable
from agent.memory import _gdbscript, _parse, _pymalloc
from agent.memory._model import (
    ClassHistogram,
    JavaHeap,
    MemorySnapshot,
    RuntimeMemory,
)
from agent.procfs import ProcessInfo

MAX_TOP = 500
JATTACH_TIMEOUT_S = 60.0
"""A class histogram walks the whole heap (and a live one collects it first)."""
GDB_TIMEOUT_S = 120.0
"""gdb loading a libpython's debug info (once per binary)."""
MAX_LAYOUTS = 64
_NO_ATTACH = "-XX:+DisableAttachMechanism"


def attach_disabled(pid: int, cmdline: list[str]) -> bool:
    """A JVM started with -XX:+DisableAttachMechanism (argument or environment)."""
    if any(_NO_ATTACH in a for a in cmdline):
        return True
    try:
        return _NO_ATTACH.encode() in (procfs.PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return False


def _read_kernel(pid: int) -> tuple[ProcessInfo, str, str]:
    info = procfs.process_info(pid)
    base = procfs.PROC / str(pid)
    try:
        rollup = (base / "smaps_rollup").read_text(errors="replace")
        smaps = (base / "smaps").read_text(errors="replace")
    except FileNotFoundError:
        procfs.require_pid(pid)  # gone meanwhile: 404
        raise
    except OSError as e:
        raise Conflict(f"cannot read the mappings of pid {pid} ({info.comm}): {e.strerror}") from e
    return info, rollup, smaps


class Service:
    def __init__(self, *, timeout_s: float = JATTACH_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        # (device, inode, mtime, minor) of a libpython -> where its allocator's state is
        self._layouts: dict[tuple[int, int, int, int], dict[str, Any]] = {}

    async def start(self) -> None:
        """Nothing to sweep: a snapshot leaves nothing behind (its tools are reaped)."""

    async def stop(self) -> None:
        """Nothing runs between requests."""

    def busy(self) -> bool:
        """A snapshot is one request: nothing that keeps an idle agent alive."""
        return False

    async def capabilities(self) -> dict[str, object]:
        """What ``GET /capabilities`` says of snapshots and each runtime's figures."""
        jattach, gdb = _proc.which("jattach"), _proc.which("gdb")
        return {
            "available": True,
            "reason": "/proc/PID/smaps_rollup and smaps: RSS, PSS, swap, anonymous vs "
            "file-backed, the largest mappings",
            "java": "jattach: GC.heap_info, GC.class_histogram; heap dumps (.hprof)"
            if jattach
            else "jattach is not installed: no JVM heap figures nor .hprof dumps",
            "python": "pymalloc read live from /proc/PID/mem (libpython's debug info read "
            "by gdb once per binary; stripped builds cannot say)"
            if gdb
            else "gdb is not installed: libpython's debug info cannot be read",
            "native": "gdb gcore core dumps" if gdb else "gdb is not installed: no core dumps",
        }

    async def snapshot(
        self, pid: int, *, top: int, runtime: bool, histogram_top: int
    ) -> MemorySnapshot:
        _in_range("top", top)
        _in_range("histogram_top", histogram_top)
        info, rollup, smaps = await asyncio.to_thread(_read_kernel, pid)
        count, kinds, biggest = await asyncio.to_thread(_parse.summary, smaps, top)
        notes: list[str] = []
        if info.state == "Z":
            notes.append("a zombie: it has no memory left, only its exit status")
        runtime_memory = await self.runtime_memory(info, histogram_top) if runtime else None
        return MemorySnapshot(
            pid=pid,
            comm=info.comm,
            container=info.container,
            runtime=info.runtime,
            taken_at=time.time(),
            totals=_parse.rollup(rollup),
            mappings=count,
            by_kind=kinds,
            largest_mappings=biggest,
            runtime_memory=runtime_memory,
            notes=notes,
        )

    async def runtime_memory(self, info: ProcessInfo, histogram_top: int) -> RuntimeMemory:
        if info.runtime == "java":
            return await self._java(info, histogram_top)
        if info.runtime == "python":
            return await self._python(info, histogram_top)
        why = {
            "go": "Go's allocator is its own (not malloc) and has no outside reader here: "
            "use the Go app's /debug/pprof/heap; RSS and mappings are above",
            "node": "V8's heap has no outside reader here (its inspector protocol needs "
            "--inspect): RSS and mappings are above",
            "dotnet": "the GC heap: POST /processes/{pid}/dump (type heap) and dotnet-dump; "
            "GET /dotnet/{pid}/counters has gc-heap-size",
        }
        return RuntimeMemory(
            runtime=info.runtime,
            available=False,
            tool=None,
            reason=why.get(info.runtime, "a native process: RSS and mappings are its answer"),
        )

    # --- the JVM -------------------------------------------------------------------
    def _require_jvm(self, info: ProcessInfo) -> str:
        tool = _proc.which("jattach")
        if info.runtime != "java":
            raise Conflict(
                f"pid {info.pid} ({info.comm}) is {info.runtime}, not a JVM: the class "
                "histogram is the JVM's (GC.class_histogram)"
            )
        if tool is None:
            raise Unavailable(
                "jattach is not installed here (Debian: apt-get install jattach; the agent "
                "image has it)",
                tool="jattach",
            )
        if attach_disabled(info.pid, info.cmdline):
            raise Conflict(
                f"pid {info.pid} ({info.comm}) was started with {_NO_ATTACH}: the JVM "
                "refuses every attach (jattach, jcmd)"
            )
        return tool

    async def jcmd(self, pid: int, command: list[str], *, tool: str = "jattach") -> str:
        """``jattach PID jcmd COMMAND``: the JVM's answer (jattach exits 0 whatever the
        JVM said; an error shows as text without the expected lines)."""
        done = await _proc.run(
            [tool, str(pid), "jcmd", " ".join(command)], timeout=self.timeout_s, check=False
        )
        if done.returncode != 0:
            raise _proc.ToolFailed(
                f"jattach failed: {_proc.tool_message(done.err or done.text, done.returncode)}",
                argv=done.argv,
                returncode=done.returncode,
                stderr=done.err,
            )
        return done.text

    async def java_heap(self, info: ProcessInfo) -> JavaHeap:
        tool = self._require_jvm(info)
        out = await self.jcmd(info.pid, ["GC.heap_info"], tool=tool)
        try:
            return _parse.heap_info(out)
        except _parse.ParseError as e:
            raise Conflict(f"pid {info.pid} ({info.comm}): {e}") from e

    async def class_histogram(self, pid: int, *, top: int, live: bool) -> ClassHistogram:
        _in_range("top", top)
        info = await asyncio.to_thread(procfs.process_info, pid)
        tool = self._require_jvm(info)
        # -all: every object, no full GC first (a pause the app feels); live: the GC runs.
        out = await self.jcmd(pid, ["GC.class_histogram", *([] if live else ["-all"])], tool=tool)
        try:
            return _parse.class_histogram(out, pid=pid, live=live, top=top)
        except _parse.ParseError as e:
            raise Conflict(f"pid {pid} ({info.comm}): {e}") from e

    async def _java(self, info: ProcessInfo, top: int) -> RuntimeMemory:
        try:
            heap = await self.java_heap(info)
            histogram = await self.class_histogram(info.pid, top=top, live=False)
        except (Conflict, Unavailable) as e:
            return RuntimeMemory(runtime="java", available=False, tool="jattach", reason=e.detail)
        except _proc.ProcError as e:
            return RuntimeMemory(runtime="java", available=False, tool="jattach", reason=str(e))
        return RuntimeMemory(
            runtime="java",
            available=True,
            tool="jattach (jcmd GC.heap_info, GC.class_histogram -all)",
            java_heap=heap,
            class_histogram=histogram,
        )

    # --- CPython -------------------------------------------------------------------
    async def _python(self, info: ProcessInfo, top: int) -> RuntimeMemory:
        def no(reason: str, tool: str | None = "/proc/PID/mem") -> RuntimeMemory:
            return RuntimeMemory(runtime="python", available=False, tool=tool, reason=reason)

        version = info.runtime_version or ""
        parts = version.split(".")
        if len(parts) < 2 or parts[0] != "3" or not parts[1].isdigit() or int(parts[1]) < 8:
            return no(f"pid {info.pid}: Python {version or '(version unknown)'}; 3.8+ is read")
        minor = int(parts[1])
        try:
            maps = await asyncio.to_thread(
                (procfs.PROC / str(info.pid) / "maps").read_text, errors="replace"
            )
            interp = _pymalloc.interpreter(maps, info.exe)
            if interp is None:
                return no(f"pid {info.pid}: neither libpython nor its executable is mapped")
            host = procfs.resolve_in_root(info.pid, interp.path)
            st = await asyncio.to_thread(host.stat)
            head = await asyncio.to_thread(_pymalloc.elf_head, host)
            bias = interp.mapped_at - _pymalloc.first_load_vaddr(head)
        except (OSError, _pymalloc.ReadError) as e:
            return no(f"pid {info.pid}: {e}")
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, minor)
        layout = self._layouts.get(key)
        if layout is None:
            gdb = _proc.which("gdb")
            if gdb is None:
                return no("gdb is not installed here: it reads libpython's debug info", None)
            try:
                done = await _proc.run(
                    _gdbscript.argv(gdb, str(host), minor=minor), timeout=GDB_TIMEOUT_S, check=False
                )
                layout = _parse.layout(done.text)
            except _proc.ProcError as e:
                return no(str(e), "gdb")
            except (_parse.ParseError, ValueError) as e:
                layout = {"error": f"{interp.path}: {e}"}
            if len(self._layouts) >= MAX_LAYOUTS:
                self._layouts.pop(next(iter(self._layouts)))
            self._layouts[key] = layout  # errors too: a stripped file stays stripped
        if "error" in layout:
            return no(str(layout["error"]), "gdb")
        try:
            doc = await asyncio.to_thread(_pymalloc.read, info.pid, layout, bias=bias)
            alloc = _parse.pymalloc(doc, top=top)
        except (_pymalloc.ReadError, KeyError, ValueError) as e:
            return no(f"pid {info.pid}: {e}")
        return RuntimeMemory(
            runtime="python",
            available=True,
            tool="/proc/PID/mem (pymalloc's arenas and pools read live, not stopped; "
            "where they are: libpython's debug info, read by gdb once per binary)",
            python_allocator=alloc,
        )


def _in_range(field: str, value: int) -> None:
    if not 1 <= value <= MAX_TOP:
        raise Invalid(f"{field} must be 1 .. {MAX_TOP} (got {value})", field=field)


def java_tmp(pid: int) -> Path:
    """The JVM's own /tmp, reached from here (where it writes a heap dump we ask for)."""
    return procfs.proc_root(pid) / "tmp"
