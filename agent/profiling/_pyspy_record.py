"""Execution of a profile's py-spy recordings: one py-spy per Python target, side by side.

Owned here: starting each planned ``py-spy record`` through :mod:`agent._proc` and
running it with the recorder's :func:`~agent.profiling.perf_record.run_to_end` (SIGINT
at the planned duration or on a stop request, py-spy then writes what it sampled;
always reaped), and turning each exit into a :class:`PySpyResult`.
One target failing (it exited before py-spy could read it, it is not CPython after
all) does not sink the others: the service reports it and keeps the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from agent import _proc
from agent.profiling.perf_record import run_to_end
from agent.profiling.planner import Plan, PySpyRun
from tracecar_formats import pyspy

_ENV_QUIET = {"RUST_BACKTRACE": "0", "RUST_LIB_BACKTRACE": "0"}


@dataclass(frozen=True, slots=True)
class PySpyResult:
    pid: int
    ok: bool
    samples: int
    errors: int
    exited: bool
    message: str
    """py-spy's own words when it failed (its stderr's tail), else its warnings joined."""


def find() -> str | None:
    """The py-spy executable (its wheel installs it beside the agent's Python)."""
    return _proc.python_tool("py-spy")


def _discard(path: Path) -> None:
    """A failed or cancelled run leaves no half-written file (one unlink: not worth a thread)."""
    with contextlib.suppress(OSError):
        path.unlink()


async def _one(run: PySpyRun, plan: Plan, *, stop: asyncio.Event) -> PySpyResult:
    out = Path(run.output)
    # py-spy prints its progress and summary on stdout, its errors on stderr: one pipe.
    child = await _proc.Child.start(
        run.argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **_ENV_QUIET},
    )
    try:
        rc, stderr, _ = await run_to_end(
            child,
            plan,
            stop=stop,
            tool="py-spy",
            end_after_s=plan.duration_s,
            output=child.proc.stdout,
        )
    except BaseException:
        _discard(out)
        raise
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
        *(_one(r, plan, stop=stop) for r in plan.py_spy),
        return_exceptions=True,
    )
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return [r for r in results if isinstance(r, PySpyResult)]
