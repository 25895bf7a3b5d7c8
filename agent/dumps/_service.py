"""Dumps of one process (core dumps and Java heap dumps), as downloadable artifacts.

This module owns ``dump`` jobs: choosing the writer (.NET: the runtime's own
``createdump``, found in the target's shared framework through /proc/PID/root;
a JVM: its own heap dump, an ``.hprof`` written by ``jattach PID dumpheap``; any
other process, or a JVM asked for ``full``: gdb's ``gcore``), checking the size
it will take against the free space and the storage limit before writing anything
(409), progress while it writes (the file's size against that estimate), and
leaving nothing behind (the half-written file, a writer that hangs, a target left
stopped).

A JVM writes its heap dump itself, in its own mount namespace: into its own /tmp
(checked for room too), from where the agent moves it into the job's directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from agent import _proc, memory, procfs
from agent.errors import Conflict, Invalid, NotFound, Unavailable
from agent.jobs import Job, JobStore, Later, later

KIND = "dump"
CORE = "core"
HPROF = "heap.hprof"
DumpFormat = Literal["core", "hprof"]
FILES: dict[DumpFormat, str] = {"core": CORE, "hprof": HPROF}
"""Each format's file in the job's directory (and the name of its download link)."""
_HPROF_DONE = re.compile(r"Heap dump file created \[(\d+) bytes")
DumpType = Literal["mini", "heap", "full"]
RESERVE_BYTES = 64 << 20
"""Left free on the agent's volume whatever the dump: the agent's other files need room."""
TIMEOUT_S = 900.0
_CREATEDUMP_FLAG = {"mini": "--normal", "heap": "--withheap", "full": "--full"}
_MAPS_LINE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ (\d+)\s*(.*)$")


class DumpRequest(BaseModel):
    """``POST /processes/{pid}/dump``."""

    model_config = ConfigDict(extra="forbid")

    type: DumpType | None = Field(
        default=None,
        description=".NET: mini (threads, stacks, modules), heap (plus the GC heap: what "
        "dotnet-dump analyze needs; the default), full (all memory); Java: heap (the "
        "default: the JVM's .hprof heap dump) or full (a core dump, gdb gcore); other "
        "processes: full only (gdb gcore)",
    )
    live: StrictBool = Field(
        default=True,
        description="Java heap dumps: live objects only (the JVM runs a full GC first: "
        "smaller, what a leak hunt wants); false: every object, unreachable ones included",
    )


def hprof_estimate(histogram: memory.ClassHistogram) -> int:
    """An upper bound of an .hprof's size from the heap's class histogram: the objects'
    bytes (references take 8 bytes in the file, 4 with compressed oops in the heap:
    +25%), a record header per object, and the class and string tables."""
    return histogram.total_bytes * 5 // 4 + histogram.total_instances * 24 + (8 << 20)


class Estimate(BaseModel):
    bytes: int = Field(description="the size the dump is expected to reach (an upper bound)")
    free_bytes: int = Field(description="free on the agent's data volume")
    limit_bytes: int = Field(description="the agent's storage limit")


class DumpResult(BaseModel):
    """A dump job's result (``Job[DumpResult]``), filled as it runs: each field shows
    once known (the estimate at the start; the size and time when written)."""

    estimate: Later[Estimate] = later("the size expected, and the room there is")
    argv: Later[list[str]] = later("the writer's command line")
    written_bytes: Later[int] = later("bytes written so far (the last look)")
    output: Later[str] = later("the writer's own words (its last 4000 characters)")
    bytes: Later[int] = later("the dump's size, written")
    seconds: Later[float] = later("how long the writing took")


DumpJob = Job[DumpResult]


def estimate(maps: str, threads: int, dump_type: DumpType) -> int:
    """An upper bound of the dump's size from the process's mappings.

    full: every readable mapping; heap: the readable anonymous and writable ones (the
    GC heap, stacks, the runtime's data; code comes from files); mini: thread stacks,
    module headers and the runtime's own data, bounded by heap's.
    """
    readable = anon = 0
    for line in maps.splitlines():
        m = _MAPS_LINE.match(line)
        if m is None or m.group(3)[0] != "r":
            continue
        size = int(m.group(2), 16) - int(m.group(1), 16)
        if m.group(5) in ("[vvar]", "[vsyscall]"):
            continue
        readable += size
        if m.group(4) == "0" or m.group(3)[1] == "w":
            anon += size
    if dump_type == "full":
        return readable
    if dump_type == "heap":
        return anon
    return min(anon, (16 << 20) + threads * (1 << 20))


class Service:
    def __init__(
        self,
        jobs: JobStore,
        *,
        max_storage_bytes: int,
        disk_free: Callable[[Path], int] | None = None,
        max_running: int = 1,
        memory_service: memory.Service | None = None,
    ) -> None:
        self.memory = memory_service
        self.jobs = jobs
        jobs.register(KIND, DumpResult)  # job.json's result is read back as the model
        self.max_storage_bytes = max_storage_bytes
        self.disk_free = disk_free or (lambda p: shutil.disk_usage(p).free)
        self.max_running = max_running

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def busy(self) -> bool:
        """A dump being written keeps an idle agent alive."""
        return bool(self.jobs.running(KIND))

    async def capabilities(self) -> dict[str, object]:
        """Which writers work here: gdb's gcore (any process), and createdump, which
        each .NET process's own runtime ships (checked per process when asked)."""
        gdb, jattach = _proc.which("gdb"), _proc.which("jattach")
        return {
            "available": True,
            "reason": "createdump for .NET processes; a JVM's .hprof heap dump through "
            "jattach; gdb's gcore for the others"
            + ("" if gdb else " (gdb is not installed here: no core dumps of the others)"),
            "writers": {
                "gcore": {"available": gdb is not None},
                "createdump": {"available": True, "reason": "the target's own runtime's"},
                "jattach": {"available": jattach is not None},
            },
            "limits": {"max_running": self.max_running, "timeout_s": TIMEOUT_S},
        }

    def plan(
        self, pid: int, req: DumpRequest, *, java_bytes: int | None = None
    ) -> tuple[list[str], DumpType, Estimate, str]:
        """The writer's argv (the output path is appended), the type, the estimate, and
        which writer it is; 404/409/422 before anything runs. ``java_bytes``: a JVM's
        heap dump's estimate (:meth:`create` asks the JVM for it)."""
        info = procfs.process_info(pid)
        if pid == os.getpid() or info.state == "Z":
            raise Conflict(
                f"pid {pid} ({info.comm}) cannot be dumped (the agent itself or a zombie)"
            )
        try:
            maps = (Path(f"/proc/{pid}/maps")).read_text(errors="replace")
        except OSError as e:
            raise Conflict(f"cannot read the mappings of pid {pid}: {e.strerror}") from e
        if info.runtime == "dotnet":
            dump_type: DumpType = req.type or "heap"
            fw = procfs.dotnet_framework(maps)
            if fw is None:
                raise Conflict(
                    f"pid {pid} ({info.comm}) is .NET but its shared framework (the folder "
                    "of libcoreclr.so, where createdump is) is not in its mappings"
                )
            tool = procfs.proc_root(pid) / fw.lstrip("/") / "createdump"
            if not tool.exists():
                raise Conflict(
                    f"pid {pid} ({info.comm}): no createdump in its shared framework {fw} "
                    "(the runtime ships it from .NET Core 2.0 on)"
                )
            argv = [str(tool), _CREATEDUMP_FLAG[dump_type], str(pid), "-f"]
            writer = f"createdump of .NET {info.runtime_version or ''}".rstrip()
        elif info.runtime == "java" and req.type in (None, "heap"):
            return self._plan_hprof(pid, info, req, maps, java_bytes)
        else:
            if req.type not in (None, "full"):
                allowed = ["heap", "full"] if info.runtime == "java" else ["full"]
                raise Invalid(
                    f"type {req.type} is for .NET processes (createdump); pid {pid} "
                    f"({info.comm}) is {info.runtime}: "
                    + (
                        "heap (the JVM's .hprof) or full (gdb gcore)"
                        if info.runtime == "java"
                        else "gdb's gcore writes full core dumps only, use type full "
                        "(or leave it out)"
                    ),
                    field="type",
                    allowed=allowed,
                )
            dump_type = "full"
            argv = ["gdb", "-nx", "-batch", "-p", str(pid), "-ex", "set pagination off"]
            writer = "gdb gcore"
        est = Estimate(
            bytes=estimate(maps, info.threads, dump_type),
            free_bytes=self.disk_free(self.jobs.data_dir),
            limit_bytes=self.max_storage_bytes,
        )
        self._check_room(pid, info, dump_type, est)
        return argv, dump_type, est, writer

    def _plan_hprof(
        self,
        pid: int,
        info: procfs.ProcessInfo,
        req: DumpRequest,
        maps: str,
        java_bytes: int | None,
    ) -> tuple[list[str], DumpType, Estimate, str]:
        tool = _proc.which("jattach")
        if tool is None:
            raise Unavailable(
                "jattach is not installed here, and a JVM's heap dump needs it (Debian: "
                "apt-get install jattach; the agent image has it); type full writes a core "
                "dump with gdb instead",
                tool="jattach",
            )
        if memory.attach_disabled(pid, info.cmdline):
            raise Conflict(
                f"pid {pid} ({info.comm}) was started with -XX:+DisableAttachMechanism: "
                "the JVM refuses a heap dump request; type full writes a core dump instead"
            )
        tmp = memory.java_tmp(pid)
        if not tmp.is_dir():
            raise Conflict(
                f"pid {pid} ({info.comm}) has no /tmp in its container: the JVM writes its "
                "heap dump there before the agent moves it; type full writes a core dump"
            )
        if java_bytes is None:  # plan() alone (no JVM asked): the heap's mappings bound it
            java_bytes = estimate(maps, info.threads, "heap")
        est = Estimate(
            bytes=java_bytes,
            free_bytes=self.disk_free(self.jobs.data_dir),
            limit_bytes=self.max_storage_bytes,
        )
        self._check_room(pid, info, "heap", est)
        app_free = self.disk_free(tmp)
        if est.bytes + RESERVE_BYTES > app_free:
            raise Conflict(
                f"a heap dump of pid {pid} ({info.comm}) may take {_mb(est.bytes)}; the "
                f"JVM writes it into its own /tmp first, which has {_mb(app_free)} free "
                f"(and keeps {_mb(RESERVE_BYTES)}): nothing was written",
                estimate={**est.model_dump(), "app_tmp_free_bytes": app_free},
            )
        argv = [tool, str(pid), "dumpheap"]
        live = "-live" if req.live else "-all"
        writer = f"jattach dumpheap ({live[1:]} objects)"
        return [*argv, live], "heap", est, writer

    def _check_room(
        self, pid: int, info: procfs.ProcessInfo, dump_type: DumpType, est: Estimate
    ) -> None:
        if est.bytes + RESERVE_BYTES > est.free_bytes:
            raise Conflict(
                f"a {dump_type} dump of pid {pid} ({info.comm}) may take {_mb(est.bytes)}; "
                f"the agent's volume has {_mb(est.free_bytes)} free (and keeps "
                f"{_mb(RESERVE_BYTES)}): nothing was written. Free space, give the agent a "
                "bigger data volume, or ask for a smaller type",
                estimate=est.model_dump(),
            )
        if est.bytes > self.max_storage_bytes:
            raise Conflict(
                f"a {dump_type} dump of pid {pid} ({info.comm}) may take {_mb(est.bytes)}, "
                f"over the agent's storage limit {_mb(self.max_storage_bytes)} "
                "(TRACECAR_AGENT_MAX_STORAGE_BYTES): nothing was written",
                estimate=est.model_dump(),
            )

    async def create(self, pid: int, req: DumpRequest) -> DumpJob:
        info = await asyncio.to_thread(procfs.process_info, pid)
        java_bytes = None
        if info.runtime == "java" and req.type in (None, "heap") and self.memory is not None:
            # The heap's class histogram (no GC) sizes the dump before anything is written.
            with contextlib.suppress(Conflict, Unavailable, _proc.ProcError):
                hist = await self.memory.class_histogram(pid, top=1, live=False)
                java_bytes = hprof_estimate(hist)
        argv, dump_type, est, writer = await asyncio.to_thread(
            self.plan, pid, req, java_bytes=java_bytes
        )
        fmt: DumpFormat = "hprof" if argv[2:3] == ["dumpheap"] else "core"
        job: DumpJob = self.jobs.create(
            KIND,
            {"pid": pid, "type": dump_type, "writer": writer, "format": fmt},
            result=DumpResult(estimate=est),
            max_running=self.max_running,
        )

        async def work(job: DumpJob) -> None:
            started = time.monotonic()
            if fmt == "hprof":
                await self._write_hprof(job, pid, argv, est)
            else:
                await self._write_core(job, pid, argv, est)
            job.result.bytes = job.artifact(FILES[fmt]).stat().st_size
            job.result.seconds = round(time.monotonic() - started, 2)

        self.jobs.start(job, work)
        return job

    async def _write_core(self, job: DumpJob, pid: int, argv: list[str], est: Estimate) -> None:
        """gcore or createdump writes into the job's directory (a ``.part`` until done)."""
        final = job.artifact(CORE)
        part = final.with_name(CORE + ".part")
        if argv[0] == "gdb":
            argv = [*argv, "-ex", f"gcore {part}", "-ex", "detach"]
        else:
            argv = [*argv, str(part)]
        tool = os.path.basename(argv[0])
        ok = False
        try:
            # Stop short of filling the volume: the estimate can be wrong.
            ceiling = min(est.free_bytes - RESERVE_BYTES, self.max_storage_bytes)
            rc, out, err = await self._watched(job, argv, part, ceiling, share=1.0, name=tool)
            job.result.output = (out + err)[-4000:]
            if rc != 0 or _size(part) == 0:
                raise _proc.ToolFailed(
                    f"{tool} failed: {_proc.tool_message(err or out, rc)}",
                    argv=argv,
                    returncode=rc,
                    stderr=err,
                )
            os.replace(part, final)
            ok = True
        finally:
            # A writer killed mid-attach can leave the target stopped: let it run again.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGCONT)
            if not ok:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()

    async def _write_hprof(self, job: DumpJob, pid: int, argv: list[str], est: Estimate) -> None:
        """The JVM writes into its own /tmp; its file is watched (progress, the ceiling),
        then moved into the job's directory. The JVM finishes a dump it has started even
        if jattach is killed: on failure its file is unlinked (the space comes back when
        the JVM closes it)."""
        name = f"tracecar-heap-{job.id}.hprof"
        in_app = memory.java_tmp(pid) / name
        final = job.artifact(HPROF)
        part = final.with_name(HPROF + ".part")
        argv = [*argv[:3], f"/tmp/{name}", *argv[3:]]
        ok = False
        try:
            ceiling = min(
                est.free_bytes - RESERVE_BYTES,
                self.max_storage_bytes,
                self.disk_free(in_app.parent) - RESERVE_BYTES,
            )
            # The move into the job's directory is the last tenth of the job.
            rc, out, err = await self._watched(
                job, argv, in_app, ceiling, share=0.9, name="jattach dumpheap"
            )
            said = memory_answer(out + err)
            job.result.output = said[-4000:]
            # jattach exits 0 whatever the JVM answered: its words say whether it wrote.
            if rc != 0 or _HPROF_DONE.search(out) is None or not in_app.exists():
                raise _proc.ToolFailed(
                    f"the JVM wrote no heap dump: {_proc.tool_message(said, rc)}",
                    argv=argv,
                    returncode=rc,
                    stderr=err,
                )
            # Moved (a copy across filesystems) to a .part first: a crash leaves no half file
            # under the final name.
            await asyncio.to_thread(shutil.move, in_app, part)
            os.replace(part, final)
            ok = True
        finally:
            for leftover in (in_app, *(() if ok else (part,))):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
        job.progress = 1.0

    async def _watched(
        self, job: DumpJob, argv: list[str], file: Path, ceiling: int, *, share: float, name: str
    ) -> tuple[int, str, str]:
        """Run a dump writer while watching the ``file`` it writes: its size against the
        estimate is the job's progress (up to ``share``), past ``ceiling`` it is stopped
        (409), past :data:`TIMEOUT_S` too (504). Its exit status, stdout and stderr; it
        is killed if anything fails while it runs (the caller removes the file)."""
        job.result.argv = argv
        est = job.result.estimate
        expected = est.bytes if est is not None else 0
        started = time.monotonic()
        child = await _proc.Child.start(argv)
        out_task = asyncio.create_task(_proc.drain_tail(child.proc.stdout))
        err_task = asyncio.create_task(_proc.drain_tail(child.proc.stderr))
        try:
            while child.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(child.wait()), 0.5)
                size = _size(file)
                job.progress = share * min(0.99, size / expected) if expected else 0.0
                job.result.written_bytes = size
                if size > ceiling:
                    raise Conflict(
                        f"the dump passed {_mb(ceiling)} (free space and the storage limit "
                        "allow no more): stopped and removed"
                    )
                if time.monotonic() - started > TIMEOUT_S:
                    raise _proc.ToolTimeout(
                        f"{name} did not finish within {TIMEOUT_S:g} s", argv=argv
                    )
            rc = child.returncode
            out = (await out_task).decode(errors="replace")
            err = (await err_task).decode(errors="replace")
            return rc, out, err
        finally:
            if child.returncode is None:
                await child.stop(signal.SIGKILL, grace=0)
            for t in (out_task, err_task):
                t.cancel()

    async def delete(self, job: DumpJob) -> None:
        await self.jobs.delete(job)

    def get(self, job_id: str) -> DumpJob:
        return self.jobs.get(KIND, job_id)

    def list(self) -> list[DumpJob]:
        return self.jobs.of_kind(KIND)

    def dump_file(self, job: DumpJob, *, fmt: DumpFormat) -> Path:
        """The dump's file; 404 naming the right link when it is the other format."""
        have = format_of(job)
        if have != fmt:
            what = "a Java heap dump (.hprof)" if have == "hprof" else "a core dump"
            raise NotFound(f"dump {job.id} is {what}: download it from {link(job, have)}")
        if not job.finished:
            raise Conflict(f"dump {job.id} is {job.state}: download it when it is written")
        path = job.artifact(FILES[fmt])
        if not path.exists():
            raise NotFound(f"dump {job.id} has no {fmt} file ({job.error or 'not written'})")
        return path


def format_of(job: DumpJob) -> DumpFormat:
    return "hprof" if job.params.get("format") == "hprof" else "core"


def link(job: DumpJob, fmt: DumpFormat) -> str:
    """Where the dump's file of this format is downloaded."""
    return f"/dumps/{job.id}/{FILES[fmt]}"


def memory_answer(out: str) -> str:
    """jattach's output without its connection lines."""
    return "\n".join(
        ln
        for ln in out.splitlines()
        if ln.strip() and not ln.startswith(("Connected to remote JVM", "JVM response code"))
    )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"
