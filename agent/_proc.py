"""The agent's one seam to child processes.

Every tool the agent drives (perf, bpftrace, lttng, babeltrace2, ...) runs through
here, so three rules hold everywhere:

* argument lists, never a shell;
* every child has a timeout, and is reaped whatever happens (cancellation included);
* every child is registered until reaped, so :func:`terminate_all` at shutdown
  leaves no stray tracer behind. Children also get ``PR_SET_PDEATHSIG`` so they
  die with the agent even if it is killed outright.

Observers (:func:`add_observer`; the app's metrics) hear each child's argv and
run time once it is reaped: this module stays the bottom layer, knowing nothing
of what listens.

Exceptions (all carry the argv and what the tool itself said)::

    ProcError
     ├── ToolNotFound     the executable does not exist on PATH
     ├── ToolTimeout      the child outlived its timeout; it was killed and reaped
     └── ToolFailed       it exited non-zero; ``stderr`` holds its own message
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_live: set[Child] = set()

Observer = Callable[[Sequence[str], float], None]
_observers: list[Observer] = []


def add_observer(fn: Observer) -> None:
    """Call ``fn(argv, seconds)`` for every child reaped from now on."""
    _observers.append(fn)


def remove_observer(fn: Observer) -> None:
    with contextlib.suppress(ValueError):
        _observers.remove(fn)


class ProcError(Exception):
    def __init__(self, message: str, *, argv: Sequence[str]) -> None:
        super().__init__(message)
        self.argv = list(argv)


class ToolNotFound(ProcError):
    pass


class ToolTimeout(ProcError):
    pass


class ToolFailed(ProcError):
    def __init__(self, message: str, *, argv: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(message, argv=argv)
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True, slots=True)
class Completed:
    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")


def which(tool: str) -> str | None:
    return shutil.which(tool)


def python_tool(tool: str) -> str | None:
    """A tool installed by a Python dependency (py-spy): beside the agent's own Python
    (its venv or the image's), else on PATH."""
    beside = Path(sys.executable).parent / tool
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(tool)


def tool_message(stderr: str, returncode: int, *, limit: int = 2000) -> str:
    """The tool's own words: the meaningful tail of stderr, never a bare exit status."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    text = "\n".join(lines[-15:])
    if len(text) > limit:
        text = "..." + text[-limit:]
    return text or f"exited with status {returncode} and printed nothing on stderr"


PERF_START_RACE = (
    "a thread of the target exited while perf was attaching to its threads (perf's own "
    "race: it then stops with status 255 and says nothing)"
)
_PERF_IGNORED_OPEN = re.compile(r"WARNING: Ignored open failure for pid \d+")


def perf_lost_a_thread_at_start(returncode: int, stderr: str) -> bool:
    """perf record's silent start failure, which starting again cures.

    With ``-p``, a thread of the target that exits after perf opened its events and
    before perf wrote its COMM record (read from /proc/TID/status) makes perf 6.1 give
    up with status 255 and nothing on stderr but its notes on threads already gone
    (``perf record -v`` shows "couldn't open /proc/TID/status"). Apps that start and
    end threads (.NET's and the JVM's workers) on a busy node hit it. Here because
    the profiles and the probes both run ``perf record -p``.
    """
    if returncode != 255:
        return False
    return all(_PERF_IGNORED_OPEN.fullmatch(ln.strip()) for ln in stderr.splitlines() if ln.strip())


def _child_setup() -> None:  # pragma: no cover - runs in the child
    # Die with the agent: a crashed agent must not leave perf/bpftrace running.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Child:
    """A running child process, in its own process group, registered until reaped."""

    def __init__(
        self, proc: asyncio.subprocess.Process, argv: Sequence[str], *, started: float
    ) -> None:
        self.proc = proc
        self.argv = list(argv)
        self.started = started
        self._observed = False
        _live.add(self)

    def _reaped(self) -> None:
        """Tell the observers, once, how long the child ran (start to reaped)."""
        if self._observed or self.proc.returncode is None:
            return
        self._observed = True
        seconds = time.monotonic() - self.started
        for fn in list(_observers):
            with contextlib.suppress(Exception):  # a listener never breaks a tool run
                fn(self.argv, seconds)

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        *,
        stdin: int | None = asyncio.subprocess.DEVNULL,
        stdout: int | None = asyncio.subprocess.PIPE,
        stderr: int | None = asyncio.subprocess.PIPE,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        limit: int = 1 << 20,
    ) -> Child:
        if not argv:
            raise ValueError("empty argv")
        exe = argv[0] if os.sep in argv[0] else shutil.which(argv[0])
        if exe is None:
            raise ToolNotFound(f"{argv[0]} is not installed (not found on PATH)", argv=argv)
        # Before the spawn: on a busy loop, create_subprocess_exec may return well after
        # the child began (a 0.1 s sleep was once measured as 0.055 s from after it).
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                exe,
                *argv[1:],
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_child_setup,
                limit=limit,
            )
        except FileNotFoundError as e:
            raise ToolNotFound(f"{argv[0]} is not installed ({e})", argv=argv) from e
        except PermissionError as e:
            raise ToolNotFound(f"{argv[0]} cannot be executed ({e})", argv=argv) from e
        return cls(proc, argv, started=started)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def send_signal(self, sig: int) -> None:
        """Signal the child's whole process group (perf's workload, bpftrace's helpers)."""
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def wait(self, timeout: float | None = None) -> int:
        try:
            rc = await asyncio.wait_for(self.proc.wait(), timeout)
        finally:
            if self.proc.returncode is not None:
                _live.discard(self)
                self._reaped()
        return rc

    async def stop(self, sig: int = signal.SIGINT, *, grace: float = 5.0) -> int:
        """Ask the child to finish (perf and bpftrace flush on SIGINT), then kill it.

        Always reaps; safe to call more than once and from a cancelled task. Cancelled
        while waiting out ``grace``, it kills and reaps the child, then lets the
        cancellation through (swallowing it would let the cancelled task carry on).
        """
        if self.proc.returncode is None:
            self.send_signal(sig)
            try:
                await asyncio.wait_for(asyncio.shield(self.proc.wait()), grace)
            except TimeoutError:
                await self._kill_and_reap()
            except asyncio.CancelledError:
                await self._kill_and_reap()
                raise
        self._forget()
        return self.proc.returncode if self.proc.returncode is not None else -1

    async def _kill_and_reap(self) -> None:
        self.send_signal(signal.SIGKILL)
        await self.proc.wait()
        self._forget()

    def _forget(self) -> None:
        # The group may still hold grandchildren (perf's `sleep`): make sure they go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        _live.discard(self)
        self._reaped()


async def run(
    argv: Sequence[str],
    *,
    timeout: float,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    check: bool = True,
) -> Completed:
    """Run a tool to completion with a timeout; raise :class:`ToolFailed` on non-zero exit."""
    child = await Child.start(
        argv,
        stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        env=env,
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(child.proc.communicate(input), timeout)
    except TimeoutError:
        await child.stop(signal.SIGKILL, grace=0)
        raise ToolTimeout(
            f"{os.path.basename(argv[0])} did not finish within {timeout:g} s", argv=argv
        ) from None
    except BaseException:
        await child.stop(signal.SIGKILL, grace=0)
        raise
    rc = await child.wait()
    done = Completed(list(argv), rc, out, err)
    if check and rc != 0:
        raise ToolFailed(
            f"{os.path.basename(argv[0])} failed: {tool_message(done.err, rc)}",
            argv=argv,
            returncode=rc,
            stderr=done.err,
        )
    return done


async def drain_tail(stream: asyncio.StreamReader | None, *, keep: int = 64 * 1024) -> bytes:
    """Read a tool's stderr to EOF (so it never blocks on a full pipe); keep its tail.

    Tools can warn a lot (perf's lost samples, missing symbols); the tail is what
    goes into an error message.
    """
    if stream is None:
        return b""
    kept = bytearray()
    while chunk := await stream.read(1 << 20):
        kept += chunk
        if len(kept) > 2 * keep:
            del kept[:-keep]
    return bytes(kept[-keep:])


async def line_batches(
    stream: asyncio.StreamReader, *, chunk: int = 1 << 16
) -> AsyncIterator[list[bytes]]:
    """A tracer's output as batches of complete lines, one batch per read.

    Batches rather than single lines so a caller can do per-read work (flush a
    histogram) and so a busy tracer costs one wake-up per 64 KiB, not per line.
    An unterminated last line at EOF is a tracer killed mid-write: dropped.
    """
    pending = b""
    while data := await stream.read(chunk):
        pending += data
        lines = pending.split(b"\n")
        pending = lines.pop()
        yield lines


async def terminate_all(grace: float = 5.0) -> None:
    """Stop every child still registered (agent shutdown)."""
    children = list(_live)
    if children:
        await asyncio.gather(*(c.stop(grace=grace) for c in children), return_exceptions=True)


def live_children() -> list[Child]:
    return list(_live)


async def build_shared_library(sources: Sequence[str], out: Path, *, timeout: float) -> None:
    """``gcc -O2 -fPIC -shared -o OUT SOURCES...`` (``sources`` may end with ``-l``
    flags), written beside ``out`` under a name of its own and renamed into place: a
    failed, timed-out or cancelled build (the agent stopping mid-build) leaves no
    half-written file, and two builds at once do not write into each other's. Raises
    what :func:`run` raises."""
    tmp = out.with_name(f"{out.name}.{os.urandom(4).hex()}.part")
    try:
        await run(["gcc", "-O2", "-fPIC", "-shared", "-o", str(tmp), *sources], timeout=timeout)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
