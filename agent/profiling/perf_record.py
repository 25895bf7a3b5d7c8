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

One failure is perf's own race, not the request's: with ``-p``, a thread of the target
that exits after perf opened its events and before perf wrote that thread's COMM
record (read from /proc/TID/status) makes perf 6.1 give up with status 255 and
nothing on stderr (``perf record -v`` shows "couldn't open /proc/TID/status"). Apps
that start and end threads (.NET's and the JVM's workers), on a busy node, hit it.
It happens before anything is recorded, so :func:`record` starts perf again, at most
:data:`START_RACE_RETRIES` times, and says so in :attr:`Recording.restarts`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from agent import _proc
from agent.profiling.planner import Plan

log = logging.getLogger(__name__)

# perf leaves the "(N samples)" out when there were none (idle targets).
_CAPTURED = re.compile(r"Captured and wrote [\d.]+ MB \S+(?: \((\d+) samples\))?")
_LOST = re.compile(r"(?:lost|Lost) (\d+) (?:chunks|samples)")
_SLEEP_NOISE = ("Terminated", "Interrupt", "perf: ", "Woken up")
_STDERR_KEEP = 64 * 1024
START_RACE_RETRIES = 10
"""A failed start costs about 0.1 s; an app that churns threads fails most starts."""


@dataclass(frozen=True, slots=True)
class Recording:
    returncode: int
    samples: int | None
    lost: int
    stopped_early: bool
    warnings: list[str]
    stderr: str
    restarts: int = 0
    """Times perf stopped at its start on its own race (:data:`agent._proc.PERF_START_RACE`)
    and was started again."""


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


def restart_note(rec: Recording) -> str:
    """The profile's note when perf had to be started again (never silent)."""
    return (
        f"perf record was started again {rec.restarts} time(s): {_proc.PERF_START_RACE}; "
        "nothing had been recorded yet, so nothing is missing"
    )


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
    restarts = 0
    while True:
        child = await _proc.Child.start(
            plan.argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        rc, stderr, stopped_early = await run_to_end(child, plan, stop=stop, tool="perf record")
        raced = _proc.perf_lost_a_thread_at_start(rc, stderr)
        if not raced or stop.is_set() or restarts == START_RACE_RETRIES:
            break
        restarts += 1
        log.warning(
            "perf record stopped at its start; starting it again",
            extra={"fields": {"why": _proc.PERF_START_RACE, "restart": restarts}},
        )
        # perf keeps an existing output as <output>.old: none may be left behind.
        await asyncio.to_thread(output.unlink, missing_ok=True)
    samples, lost, warnings = parse_stderr(stderr)
    if samples is None or not await asyncio.to_thread(output.exists):
        why = (
            f"it stopped at its start {restarts + 1} times in a row: "
            f"{_proc.PERF_START_RACE}; try again"
            if raced
            else _proc.tool_message(stderr, rc)
        )
        raise _proc.ToolFailed(
            f"perf record failed: {why}", argv=plan.argv, returncode=rc, stderr=stderr
        )
    return Recording(
        returncode=rc,
        samples=samples,
        lost=lost,
        stopped_early=stopped_early,
        warnings=warnings,
        stderr=stderr,
        restarts=restarts,
    )
