"""Taking one snapshot: the process checked, the tool run and reaped, its output parsed.

What can go wrong, and what the client hears (never a 500, never a stopped target):

* no such process, or it exits while the tool runs      -> 404
* a zombie, already traced (a debugger, strace), or not
  the runtime asked for, or py-spy sees no interpreter  -> 409, saying which
* the JVM refuses the attach (or is started not to)     -> 409 with the JVM's words
* the tool is not installed                              -> 503 naming it and how to get it
* the tool fails otherwise                               -> 502 with its stderr, summarised
* the tool outlives ``stack_timeout_s``                  -> 504; it is killed and reaped

py-spy and gdb stop the target with ptrace while they read it. A tracer that dies
(killed on timeout) is detached by the kernel, but a ``SIGSTOP`` its attach sent
and it never consumed leaves the process *stopped* (state ``T``); so after every
run a target that was not stopped before and is now gets a ``SIGCONT``, and after a
killed run it gets one anyway (a SIGCONT discards a stop signal still pending).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import re
import shutil
import signal
import time

from agent import _proc, capabilities, procfs
from agent.errors import AgentError, Conflict, NotFound, ToolError, Unavailable
from agent.stacks import _parse
from agent.stacks._model import RequestedRuntime, StackSnapshot, ThreadStack, Tool
from agent.stacks._plan import Plan, plan


def find_tools() -> dict[Tool, str | None]:
    return {
        "py-spy": _proc.python_tool("py-spy"),
        "jattach": shutil.which("jattach"),
        "gdb": shutil.which("gdb"),
    }


def _identity(pid: int) -> tuple[int, str] | None:
    """(start time, state) of ``pid`` now; None when it is gone. The start time tells
    the same process from a new one that reused the pid."""
    try:
        st = procfs.parse_stat((procfs.PROC / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None
    return st.start_ticks, st.state


def _tracer(pid: int) -> int:
    try:
        status = procfs.parse_status((procfs.PROC / str(pid) / "status").read_text())
        return int(status.get("TracerPid", "0"))
    except (OSError, ValueError):
        return 0


def _comm(pid: int) -> str:
    try:
        return (procfs.PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"


_NO_ATTACH = b"-XX:+DisableAttachMechanism"


def _attach_disabled(pid: int, cmdline: list[str]) -> bool:
    """A JVM started with -XX:+DisableAttachMechanism (argument, or JAVA_TOOL_OPTIONS and
    the like in its environment). Asked anyway, it would print a thread dump into its
    own stdout (jattach's SIGQUIT) and jattach would give up after 6 s."""
    if any(_NO_ATTACH.decode() in a for a in cmdline):
        return True
    try:
        return _NO_ATTACH in (procfs.PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return False


def name_jit_frames(pid: int, threads: list[ThreadStack]) -> int:
    """Name the ``??`` frames that fall in the process's perf map (JIT'd methods, as
    the runtime wrote them); how many were named, -1 when it has no perf map."""
    try:
        with procfs.open_perf_map(pid) as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return -1
    starts: list[int] = []
    entries: list[tuple[int, str]] = []
    for line in text.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3:
            with contextlib.suppress(ValueError):
                start, size = int(parts[0], 16), int(parts[1], 16)
                starts.append(start)
                entries.append((start + size, parts[2]))
    order = sorted(range(len(starts)), key=starts.__getitem__)
    starts = [starts[i] for i in order]
    entries = [entries[i] for i in order]
    named = 0
    for t in threads:
        for fr in t.frames:
            if fr.function != "??" or fr.address is None:
                continue
            addr = int(fr.address, 16)
            i = bisect.bisect_right(starts, addr) - 1
            if i >= 0 and addr < entries[i][0]:
                fr.function = entries[i][1]
                fr.module = f"/tmp/perf-{pid}.map"
                named += 1
    return named


def summarise(stderr: str, returncode: int) -> str:
    """The tool's own words without its noise: py-spy's Rust backtrace, gdb's missing
    source lines (``29\t../sysdeps/...: No such file or directory.``)."""
    text = stderr.split("\nStack backtrace:", 1)[0]
    lines = [ln for ln in text.splitlines() if not re.match(r"^\d+\t", ln)]
    return _proc.tool_message("\n".join(lines), returncode, limit=1000)


class Stacks:
    """Snapshots, one at a time per process (a second ptrace attach would fail)."""

    def __init__(self, *, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._locks: dict[int, tuple[asyncio.Lock, int]] = {}  # pid -> (lock, its users)

    async def start(self) -> None:
        """Nothing runs between snapshots."""

    async def stop(self) -> None:
        """Nothing to stop: a snapshot's tool is reaped by its own timeout, and the app's
        final ``_proc.terminate_all``."""

    def busy(self) -> bool:
        """A snapshot is one request: the request itself keeps the agent alive."""
        return False

    async def capabilities(self) -> dict[str, object]:
        """``GET /capabilities``' ``stacks``: which kinds of stacks work here, and why not."""
        found = find_tools()
        pyspy, jattach, gdb = await asyncio.gather(
            capabilities.tool_version("py-spy", "--version", path=found["py-spy"]),
            capabilities.tool_version("jattach"),  # its usage names its version
            capabilities.tool_version("gdb", "--version"),
        )
        ptrace = "SYS_PTRACE" in capabilities.effective_caps()
        kinds = {
            "python": bool(pyspy.get("available")) and ptrace,
            "java": bool(jattach.get("available")),
            "native": bool(gdb.get("available")) and ptrace,
        }
        missing = [k for k, ok in kinds.items() if not ok]
        reason = (
            "every kind of stack can be taken"
            if not missing
            else f"no {', '.join(missing)} stacks: "
            + ("CAP_SYS_PTRACE is not held; " if not ptrace else "")
            + "see tools"
        )
        return {
            "available": any(kinds.values()),
            "reason": reason,
            "kinds": kinds,
            "tools": {"py-spy": pyspy, "jattach": jattach, "gdb": gdb},
            "timeout_s": self.timeout_s,
        }

    async def snapshot(
        self,
        pid: int,
        *,
        runtime: RequestedRuntime = "auto",
        native: bool = False,
        text: bool = False,
    ) -> StackSnapshot | str:
        """The snapshot as a model, or (``text``) as the tool printed it."""
        info = await asyncio.to_thread(procfs.process_info, pid)
        if info.state == "Z":
            raise Conflict(f"pid {pid} is a zombie (it exited; its parent has not reaped it)")
        the_plan = plan(
            pid, info.runtime, requested=runtime, native=native, text=text, tools=find_tools()
        )
        if the_plan.tool == "jattach" and _attach_disabled(pid, info.cmdline):
            raise Conflict(
                f"the JVM of pid {pid} runs with -XX:+DisableAttachMechanism: it answers no "
                "attach (jattach, jcmd, jstack); runtime=native shows its native stacks",
                tool="jattach",
            )
        lock, users = self._locks.get(pid, (asyncio.Lock(), 0))
        self._locks[pid] = (lock, users + 1)
        try:
            async with lock:
                return await self._take(the_plan)
        finally:
            # Forgotten by the last user only: a waiter keeps the lock the others share.
            lock, users = self._locks[pid]
            if users == 1:
                del self._locks[pid]
            else:
                self._locks[pid] = (lock, users - 1)

    async def _take(self, p: Plan) -> StackSnapshot | str:
        before = _identity(p.pid)
        if before is None:
            raise NotFound(f"no process with pid {p.pid} in this pod (see GET /processes)")
        tracer = _tracer(p.pid)
        if tracer and p.tool != "jattach":
            raise Conflict(
                f"pid {p.pid} is already traced by pid {tracer} ({_comm(tracer)}): a debugger "
                f"or tracer holds it, and {p.tool} cannot attach while it does"
            )
        started = time.time()
        t0 = time.monotonic()
        finished = False
        try:
            done = await _proc.run(p.argv, timeout=self.timeout_s, check=False)
            finished = True
        except _proc.ToolTimeout:
            self._gone(p, before)
            raise
        except _proc.ToolNotFound as e:
            raise Unavailable(str(e), tool=p.tool) from e
        finally:
            # Killed (timeout, or the request cancelled): its attach's SIGSTOP may still
            # be pending, so SIGCONT whatever the state now (it discards a pending stop).
            self._resume(p.pid, before, killed=not finished)
        duration_ms = round((time.monotonic() - t0) * 1000, 1)
        try:
            result = self._parse(p, done)
        except _parse.Unparsable as e:
            self._gone(p, before)
            raise self._failure(p, done, str(e)) from None
        # Exited (or its pid reused) by now: what the tool printed is a dying process's
        # partial state (gdb lists threads without frames), not a snapshot.
        self._gone(p, before)
        notes = list(p.notes)
        if isinstance(result, list) and p.runtime == "dotnet" and p.kind == "native":
            named = await asyncio.to_thread(name_jit_frames, p.pid, result)
            notes.append(
                f"{named} managed frame(s) named from /tmp/perf-{p.pid}.map"
                if named >= 0
                else f"pid {p.pid} has no perf map: its managed frames stay `??`; start it "
                "with COMPlus_PerfMapEnabled=1 (DOTNET_ from .NET 5) to name them"
            )
            if p.text and result:
                return _parse.walk_text(result) + "".join(f"# {n}\n" for n in notes)
        if isinstance(result, str):
            return result
        if not result:
            raise self._failure(p, done, "it printed no thread")
        return StackSnapshot(
            pid=p.pid,
            runtime=p.runtime,
            kind=p.kind,
            tool=p.tool,
            taken_at=round(started, 3),
            duration_ms=duration_ms,
            threads=result,
            notes=notes,
        )

    def _parse(self, p: Plan, done: _proc.Completed) -> list[ThreadStack] | str:
        if done.returncode != 0 and p.tool != "gdb":  # gdb exits 0 even when attach fails
            raise _parse.Unparsable(f"{p.tool} exited with status {done.returncode}")
        out = done.text
        if p.tool == "py-spy":
            return _parse.pyspy_text(out) if p.text else _parse.pyspy_json(out)
        if p.tool == "jattach":
            return _parse.jattach_text(out) if p.text else _parse.jattach(out)
        if p.runtime == "dotnet" and p.kind == "native":
            return _parse.gdb_walk(out)  # named and rendered by _take
        if p.text:
            return _parse.gdb_text(out)
        return _parse.gdb(out)

    @staticmethod
    def _gone(p: Plan, before: tuple[int, str]) -> None:
        """404 when the target exited (or its pid was reused) while the tool ran."""
        now = _identity(p.pid)
        if now is None or now[0] != before[0] or now[1] == "Z":
            raise NotFound(f"pid {p.pid} exited during the snapshot ({p.tool} was reading it)")

    @staticmethod
    def _resume(pid: int, before: tuple[int, str], *, killed: bool) -> None:
        """SIGCONT a target a tracer left stopped, or may leave stopped (killed: its
        attach's SIGSTOP may not be delivered yet). Never one that was stopped before."""
        now = _identity(pid)
        if now is None or now[0] != before[0] or before[1] == "T":
            return
        if killed or now[1] == "T":
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGCONT)

    @staticmethod
    def _failure(p: Plan, done: _proc.Completed, why: str) -> AgentError:
        said = summarise(done.err or done.text, done.returncode)
        if p.tool == "py-spy" and "Failed to find python version" in said:
            return Conflict(
                f"py-spy finds no Python interpreter in pid {p.pid} ({said}); "
                "runtime=native shows its native stacks",
                tool=p.tool,
            )
        if p.tool == "jattach":
            return Conflict(
                f"the JVM of pid {p.pid} did not answer the attach ({said}). The JVM may "
                "still be starting, or run with -XX:+DisableAttachMechanism; "
                "runtime=native shows its native stacks",
                tool=p.tool,
            )
        if p.tool == "gdb" and "ptrace:" in said:
            hint = (
                " (the agent needs CAP_SYS_PTRACE, or a tracer outside this pod holds it)"
                if "not permitted" in said
                else ""
            )
            return Conflict(f"gdb cannot attach to pid {p.pid}: {said}{hint}", tool=p.tool)
        return ToolError(f"{p.tool} failed on pid {p.pid}: {why}: {said}", tool=p.tool)
