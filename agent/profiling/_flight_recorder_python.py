"""The flight recorder's Python side: one second of one Python process, sampled by py-spy.

py-spy writes its stacks only when a recording ends, so the recorder cuts its
recording into one-second runs (:func:`record_second`), each started just before the
wall-clock second it covers and folded into that second's bucket: whole Python
stacks (function and file, as on-demand profiles show them) arrive about a second
after they were sampled, which keeps the ring's lag under two seconds.

Each run is ``py-spy record --nonblocking`` (reads the interpreter's memory without
pausing it: the app pays nothing but cache traffic) at the recorder's rate, stopped
with SIGINT (py-spy then writes what it sampled) the moment its wall-clock second
ends (``until``), so a second's Python stacks are in hand a few tens of milliseconds
after it ends whenever py-spy started: on a loaded machine py-spy's own
``--duration 1`` ran a second from whenever its sampling began, which was up to a
second late, and the ring waited for it (the lag went past 2 s). ``--duration`` stays
as py-spy's own bound should the signal be lost. Without ``until``, ``--duration 1``
stops after ``rate - 1`` samples, so it is asked for one more per second than the
recorder's rate: a second then holds ``rate`` samples per busy thread, as the
sampler's do. ``--function`` names each frame by its function's first
line rather than the line running, so a function is one frame and the ring holds one
stack per call path (not one per line). The child goes through :mod:`agent._proc`:
a timeout, always reaped, the half-written file removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from agent import _proc
from tracecar_formats import pyspy

RUN_TIMEOUT_S = 10.0
"""A one-second run that has not ended by then is killed (a stuck ptrace read)."""
_ENV_QUIET = {"RUST_BACKTRACE": "0", "RUST_LIB_BACKTRACE": "0"}


@dataclass(frozen=True, slots=True)
class Second:
    """What one run gave: ``stacks`` (folded, the comm as root) or, when it failed,
    None and py-spy's own words; ``started_after_s``: how long py-spy took from
    being started to sampling (the next run starts that much earlier)."""

    stacks: dict[str, int] | None
    message: str
    started_after_s: float
    exited: bool
    late: bool = False
    """Not attached by its second's end: no failure of py-spy's, the next run starts
    earlier (``started_after_s`` is then the time waited)."""


SIGNALLED_DURATION_S = 3
"""py-spy's own bound on a run we stop with SIGINT at its second's end."""


def argv(
    *, pyspy_path: str, pid: int, frequency_hz: int, output: Path, signalled: bool = False
) -> list[str]:
    """``signalled``: the run is stopped by SIGINT at its second's end (see the module
    docstring), so py-spy samples at exactly the recorder's rate."""
    return [
        pyspy_path,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(SIGNALLED_DURATION_S) if signalled else "1",
        "--rate",
        str(frequency_hz if signalled else frequency_hz + 1),
        "--nonblocking",
        "--function",
        "--full-filenames",
        "--format",
        "raw",
        "--output",
        str(output),
    ]


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


LATE_ATTACH_S = 0.2
"""A run not attached this long after its second ended has missed that second: killed."""


async def _stop_at(
    child: _proc.Child, until: float, attached: asyncio.Event, late: asyncio.Event
) -> None:
    """SIGINT at wall-clock ``until``, once py-spy is attached (before that, SIGINT
    would end it before its Ctrl-C handler is set: nothing written). Not attached
    ``LATE_ATTACH_S`` after ``until`` (a loaded node: py-spy's start-up took longer than
    the lead): the run is killed and ``late`` set, so its second completes at once with
    the sampler's stacks instead of waiting for a run that sampled none of it."""
    await asyncio.sleep(max(0.0, until - time.time()))
    try:
        await asyncio.wait_for(attached.wait(), LATE_ATTACH_S)
    except TimeoutError:
        late.set()
        child.send_signal(signal.SIGKILL)
        return
    child.send_signal(signal.SIGINT)


async def record_second(
    *,
    pyspy_path: str,
    pid: int,
    comm: str,
    frequency_hz: int,
    output: Path,
    until: float | None = None,
) -> Second:
    """One second of ``pid``'s Python stacks (see the module docstring); ``until``: the
    Unix time its second ends, when py-spy is stopped."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    child = await _proc.Child.start(
        argv(
            pyspy_path=pyspy_path,
            pid=pid,
            frequency_hz=frequency_hz,
            output=output,
            signalled=until is not None,
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **_ENV_QUIET},
    )
    started_after = 0.0
    said: list[bytes] = []
    attached = asyncio.Event()
    late = asyncio.Event()
    stopper = (
        asyncio.ensure_future(_stop_at(child, until, attached, late)) if until is not None else None
    )
    try:
        assert child.proc.stdout is not None
        async with asyncio.timeout(RUN_TIMEOUT_S):
            while line := await child.proc.stdout.readline():
                # py-spy prints "Sampling process ..." once it is attached: sampling starts.
                if not started_after and b"Sampling process" in line:
                    started_after = loop.time() - t0
                    attached.set()
                if sum(map(len, said)) < 16384:
                    said.append(line)
            rc = await child.wait()
        if late.is_set():
            _discard(output)
            waited = loop.time() - t0
            return Second(None, "py-spy attached after its second ended", waited, False, late=True)
        text = b"".join(said).decode("utf-8", "replace")
        summary = pyspy.parse_stderr(text)
        if summary.samples is None:
            _discard(output)
            return Second(
                None,
                _proc.tool_message(text.replace("py-spy> ", ""), rc),
                started_after,
                summary.exited,
            )
        raw = await asyncio.to_thread(_read_and_remove, output)
        return Second(pyspy.fold(raw, comm=comm, pid=pid), "", started_after, summary.exited)
    except TimeoutError:
        _discard(output)
        return Second(None, f"py-spy did not end within {RUN_TIMEOUT_S:g} s", started_after, False)
    finally:
        if stopper is not None:
            stopper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopper
        await child.stop(signal.SIGKILL, grace=0)
        _discard(output)  # cancelled or failed: no file left behind


def _read_and_remove(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    finally:
        _discard(path)
