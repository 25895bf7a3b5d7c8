"""Execution of a planned recording: run ``perf record`` and read what it said.

Owned here: starting perf through :mod:`agent._proc` (its own process group, a
timeout of duration + slack, always reaped), stopping it early on request with
SIGINT (perf then writes a complete perf.data: what was recorded is kept), and
turning its exit into a :class:`Recording` or a :class:`agent._proc.ToolFailed`
carrying perf's own message.

perf's exit status is not the whole story: when every target exits before the
``sleep`` ends, perf stops the workload and exits with 143, and on SIGINT with 130;
both still wrote a good perf.data. Success is "perf said it captured and wrote
the file", not "exit status 0".
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from agent import _proc
from agent.profiling.planner import Plan

# perf leaves the "(N samples)" out when there were none (idle targets).
_CAPTURED = re.compile(r"Captured and wrote [\d.]+ MB \S+(?: \((\d+) samples\))?")
_LOST = re.compile(r"(?:lost|Lost) (\d+) (?:chunks|samples)")
_SLEEP_NOISE = ("Terminated", "Interrupt", "perf: ", "Woken up")
_STDERR_KEEP = 64 * 1024


@dataclass(frozen=True, slots=True)
class Recording:
    returncode: int
    samples: int | None
    lost: int
    stopped_early: bool
    warnings: list[str]
    stderr: str


def parse_stderr(stderr: str) -> tuple[int | None, int, list[str]]:
    """Samples, lost chunks/samples, and perf's warnings from its stderr."""
    m = _CAPTURED.search(stderr)
    samples = (int(m.group(1)) if m.group(1) else 0) if m else None
    lost = sum(int(x) for x in _LOST.findall(stderr))
    warnings = [
        ln.strip()
        for ln in stderr.splitlines()
        if ln.strip() and not ln.startswith("[ perf record:") and ln.strip() not in _SLEEP_NOISE
    ]
    return samples, lost, warnings[:20]


async def run_to_end(
    child: _proc.Child,
    plan: Plan,
    *,
    stop: asyncio.Event,
    tool: str,
    end_after_s: float | None = None,
    output: asyncio.StreamReader | None = None,
) -> tuple[int, str, bool]:
    """Wait for a recording tool until it ends, ``stop`` is set, or the plan's timeout.

    On ``stop``: SIGINT to its group (perf stops its workload and finishes writing
    the file; bpftrace runs END and prints its maps). On timeout: killed, and
    :class:`agent._proc.ToolTimeout`. Always reaped, cancellation included.
    ``end_after_s``: for a tool that runs until told (py-spy), SIGINT at that time
    is its planned end, not a timeout. ``output``: the stream its messages are on
    (default its stderr). Returns the exit status, those messages, and whether it
    was stopped early.
    """
    stream = output if output is not None else child.proc.stderr
    err_task = asyncio.ensure_future(_proc.drain_tail(stream, keep=_STDERR_KEEP))
    wait_task = asyncio.ensure_future(child.proc.wait())
    stop_task = asyncio.ensure_future(stop.wait())
    stopped_early = False
    try:
        wait_s = plan.timeout_s if end_after_s is None else end_after_s
        done, _ = await asyncio.wait(
            {wait_task, stop_task}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
        )
        if wait_task not in done:
            if stop_task in done:
                stopped_early = True
                await child.stop(signal.SIGINT, grace=15)
            elif end_after_s is not None:
                # Its planned end: SIGINT makes it write what it sampled, within the
                # time the plan has left.
                grace = min(max(plan.timeout_s - end_after_s, 1.0), 15.0)
                await child.stop(signal.SIGINT, grace=grace)
            else:
                await child.stop(signal.SIGKILL, grace=0)
                raise _proc.ToolTimeout(
                    f"{tool} did not finish within {plan.timeout_s:g} s; it was killed",
                    argv=plan.argv,
                )
        rc = await child.stop()  # reaps (a no-op when it has exited)
        stderr = (await err_task).decode("utf-8", "replace")
    except BaseException:
        # Cancelled (discard, shutdown) or anything unexpected: the tool must not survive us.
        await child.stop(signal.SIGINT, grace=5)
        raise
    finally:
        for t in (wait_task, err_task, stop_task):
            if not t.done():
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
    return rc, stderr, stopped_early


async def record(plan: Plan, *, output: Path, stop: asyncio.Event) -> Recording:
    """Run ``plan.argv`` (which writes ``output``) until it ends, ``stop`` is set, or timeout."""
    child = await _proc.Child.start(
        plan.argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    rc, stderr, stopped_early = await run_to_end(child, plan, stop=stop, tool="perf record")
    samples, lost, warnings = parse_stderr(stderr)
    if samples is None or not await asyncio.to_thread(output.exists):
        raise _proc.ToolFailed(
            f"perf record failed: {_proc.tool_message(stderr, rc)}",
            argv=plan.argv,
            returncode=rc,
            stderr=stderr,
        )
    return Recording(
        returncode=rc,
        samples=samples,
        lost=lost,
        stopped_early=stopped_early,
        warnings=warnings,
        stderr=stderr,
    )
