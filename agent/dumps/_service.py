"""Core dumps of one process, as downloadable artifacts.

This module owns ``dump`` jobs: choosing the writer (.NET: the runtime's own
``createdump``, found in the target's shared framework through /proc/PID/root;
any other process: gdb's ``gcore``), checking the size it will take against the
free space and the storage limit before writing anything (409), progress while
it writes (the file's size against that estimate), and leaving nothing behind
(the half-written file, a writer that hangs, a target left stopped).
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

from pydantic import BaseModel, ConfigDict, Field

from agent import _proc, procfs
from agent.errors import Conflict, Invalid, NotFound
from agent.jobs import DictJob, JobStore

KIND = "dump"
CORE = "core"
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
        "dotnet-dump analyze needs; the default), full (all memory); other processes: "
        "full only (gdb gcore)",
    )


class Estimate(BaseModel):
    bytes: int = Field(description="the size the dump is expected to reach (an upper bound)")
    free_bytes: int = Field(description="free on the agent's data volume")
    limit_bytes: int = Field(description="the agent's storage limit")


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
    ) -> None:
        self.jobs = jobs
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
        gdb = _proc.which("gdb")
        return {
            "available": True,
            "reason": "createdump for .NET processes; gdb's gcore for the others"
            + ("" if gdb else " (not installed here: .NET processes only)"),
            "writers": {
                "gcore": {"available": gdb is not None},
                "createdump": {"available": True, "reason": "the target's own runtime's"},
            },
            "limits": {"max_running": self.max_running, "timeout_s": TIMEOUT_S},
        }

    def plan(self, pid: int, req: DumpRequest) -> tuple[list[str], DumpType, Estimate, str]:
        """The writer's argv (the output path is appended), the type, the estimate, and
        which writer it is; 404/409/422 before anything runs."""
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
        else:
            if req.type not in (None, "full"):
                raise Invalid(
                    f"type {req.type} is for .NET processes (createdump); pid {pid} "
                    f"({info.comm}) is {info.runtime}: gdb's gcore writes full core dumps "
                    "only, use type full (or leave it out)",
                    field="type",
                    allowed=["full"],
                )
            dump_type = "full"
            argv = ["gdb", "-nx", "-batch", "-p", str(pid), "-ex", "set pagination off"]
            writer = "gdb gcore"
        est = Estimate(
            bytes=estimate(maps, info.threads, dump_type),
            free_bytes=self.disk_free(self.jobs.data_dir),
            limit_bytes=self.max_storage_bytes,
        )
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
        return argv, dump_type, est, writer

    async def create(self, pid: int, req: DumpRequest) -> DictJob:
        argv, dump_type, est, writer = await asyncio.to_thread(self.plan, pid, req)
        job: DictJob = self.jobs.create(
            KIND,
            {"pid": pid, "type": dump_type, "writer": writer},
            result={},
            max_running=self.max_running,
        )
        job.result["estimate"] = est.model_dump()

        async def work(job: DictJob) -> None:
            await self._write(job, pid, argv, dump_type, est)

        self.jobs.start(job, work)
        return job

    async def _write(
        self, job: DictJob, pid: int, argv: list[str], dump_type: DumpType, est: Estimate
    ) -> None:
        final = job.artifact(CORE)
        part = final.with_name(CORE + ".part")
        if argv[0] == "gdb":
            argv = [*argv, "-ex", f"gcore {part}", "-ex", "detach"]
        else:
            argv = [*argv, str(part)]
        job.result["argv"] = argv
        # Stop short of filling the volume: the estimate can be wrong.
        ceiling = min(est.free_bytes - RESERVE_BYTES, self.max_storage_bytes)
        started = time.monotonic()
        child = await _proc.Child.start(argv)
        out_task = asyncio.create_task(_proc.drain_tail(child.proc.stdout))
        err_task = asyncio.create_task(_proc.drain_tail(child.proc.stderr))
        ok = False
        try:
            while child.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(child.wait()), 0.5)
                size = _size(part)
                job.progress = min(0.99, size / est.bytes) if est.bytes else 0.0
                job.result["written_bytes"] = size
                if size > ceiling:
                    raise Conflict(
                        f"the dump passed {_mb(ceiling)} (free space and the storage limit "
                        "allow no more): stopped and removed"
                    )
                if time.monotonic() - started > TIMEOUT_S:
                    raise _proc.ToolTimeout(
                        f"{os.path.basename(argv[0])} did not finish within {TIMEOUT_S:g} s",
                        argv=argv,
                    )
            rc = child.returncode
            out = (await out_task).decode(errors="replace")
            err = (await err_task).decode(errors="replace")
            job.result["output"] = (out + err)[-4000:]
            if rc != 0 or not part.exists() or _size(part) == 0:
                raise _proc.ToolFailed(
                    f"{os.path.basename(argv[0])} failed: {_proc.tool_message(err or out, rc)}",
                    argv=argv,
                    returncode=rc,
                    stderr=err,
                )
            os.replace(part, final)
            ok = True
        finally:
            if child.returncode is None:
                await child.stop(signal.SIGKILL, grace=0)
            for t in (out_task, err_task):
                t.cancel()
            # A writer killed mid-attach can leave the target stopped: let it run again.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGCONT)
            if not ok:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
        job.result["bytes"] = final.stat().st_size
        job.result["seconds"] = round(time.monotonic() - started, 2)

    def get(self, job_id: str) -> DictJob:
        return self.jobs.get(KIND, job_id)

    def list(self) -> list[DictJob]:
        return self.jobs.of_kind(KIND)

    def core_file(self, job: DictJob) -> Path:
        if not job.finished:
            raise Conflict(f"dump {job.id} is {job.state}: download it when it is written")
        path = job.artifact(CORE)
        if not path.exists():
            raise NotFound(f"dump {job.id} has no core file ({job.error or 'not written'})")
        return path

    async def delete(self, job: DictJob) -> None:
        await self.jobs.delete(job)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"
