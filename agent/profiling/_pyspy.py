"""Execution of a profile's py-spy recordings: one py-spy per Python target, side by side.

Owned here: starting each planned ``py-spy record`` through :mod:`agent._proc` (its
own process group, always reaped), stopping all of them with SIGINT when the
planned duration ends or a stop is requested (py-spy then writes what it sampled),
killing what outlives the timeout, and turning each exit into a :class:`PySpyResult`.
One target failing (it exited before py-spy could read it, it is not CPython after
all) does not sink the others: the service reports it and keeps the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from agent import _proc
from agent.profiling import pyspy
from agent.profiling.planner import Plan, PySpyRun

_ENV_QUIET = {"RUST_BACKTRACE": "0", "RUST_LIB_BACKTRACE": "0"}
_STOP_GRACE_S = 10.0


@dataclass(frozen=True, slots=True)
class PySpyResult:
    pid: int
    ok: bool
    samples: int
    errors: int
    exited: bool
    message: str
    """py-spy's own words when it failed (its stderr's tail), else its warnings joined."""


def _discard(path: Path) -> None:
    """A failed or cancelled run leaves no half-written file (one unlink: not worth a thread)."""
    with contextlib.suppress(OSError):
        path.unlink()


async def _one(
    run: PySpyRun, *, duration_s: float, timeout_s: float, stop: asyncio.Event
) -> PySpyResult:
    out = Path(run.output)
    # py-spy prints its progress and summary on stdout, its errors on stderr: one pipe.
    child = await _proc.Child.start(
        run.argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **_ENV_QUIET},
    )
    err_task = asyncio.ensure_future(_proc.drain_tail(child.proc.stdout, keep=64 * 1024))
    wait_task = asyncio.ensure_future(child.proc.wait())
    stop_task = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait(
            {wait_task, stop_task}, timeout=duration_s, return_when=asyncio.FIRST_COMPLETED
        )
        if wait_task not in done:
            # The planned end (or a stop): SIGINT makes py-spy write its file.
            remaining = max(timeout_s - duration_s, 1.0)
            await child.stop(signal.SIGINT, grace=min(remaining, _STOP_GRACE_S))
        rc = await child.stop()
        stderr = (await err_task).decode("utf-8", "replace")
    except BaseException:
        await child.stop(signal.SIGINT, grace=2)
        _discard(out)
        raise
    finally:
        for t in (wait_task, err_task, stop_task):
            if not t.done():
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
    summary = pyspy.parse_stderr(stderr)
    if summary.samples is None or not await asyncio.to_thread(out.exists):
        _discard(out)
        return PySpyResult(
            pid=run.pid,
            ok=False,
            samples=0,
            errors=0,
            exited=summary.exited,
            message=_proc.tool_message(stderr.replace("py-spy> ", ""), rc),
        )
    return PySpyResult(
        pid=run.pid,
        ok=True,
        samples=summary.samples,
        errors=summary.errors,
        exited=summary.exited,
        message="; ".join(summary.warnings),
    )


async def record_all(plan: Plan, *, stop: asyncio.Event) -> list[PySpyResult]:
    """Run every planned py-spy until the planned duration, ``stop``, or its end."""
    if not plan.py_spy:
        return []
    # Every run ends (and is reaped) before anything is raised: none is left behind.
    results = await asyncio.gather(
        *(
            _one(r, duration_s=plan.duration_s, timeout_s=plan.timeout_s, stop=stop)
            for r in plan.py_spy
        ),
        return_exceptions=True,
    )
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return [r for r in results if isinstance(r, PySpyResult)]
