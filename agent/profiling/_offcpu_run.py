"""Execution of a planned off-CPU recording: bpftrace (frame pointers), perf (DWARF), or both.

Owned here:

* the bpftrace run: started through :mod:`agent._proc` (own process group, a timeout
  of duration + slack, always reaped), stopped early with SIGINT (bpftrace then runs
  END, which prints the map: what was recorded is kept), its JSON output written as
  the profile's raw artifact and folded with the targets' symbols (read while they
  still run: an exited process's frames show as ``[unknown]``);
* the perf side's post-processing: ``perf script`` streamed through
  :class:`agent.profiling.offcpu_fold.PerfTimedFolder` (the recording itself is
  :func:`agent.profiling.perf_record.record`, as for CPU profiles: same stop, timeout
  and reaping);
* whether perf can record off-CPU stacks here (:func:`dwarf_unavailable`) and how
  often the targets leave the CPU (:func:`switch_rates`, for the cost bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from agent import _proc, capabilities, procfs
from agent.jobs import atomic_path
from agent.profiling.offcpu_fold import (
    ENV,
    PerfTimedFolder,
    TimedStats,
    fold,
    parse_output,
    perf_script_argv,
    sampling_weight,
)
from agent.profiling.perf_record import run_to_end
from agent.profiling.planner import Plan
from agent.symbolize.resolver import Symbolizer
from agent.symbolize.ustacks import UserStacks

# bpftrace's RLIMIT_MEMLOCK warning is harmless (the kernel accounts BPF memory by cgroup).
_NOISE = ("RLIMIT_MEMLOCK", "Attaching ")
_STDERR_KEEP = 64 * 1024
_RATE_WINDOW_S = 0.25


@dataclass(frozen=True, slots=True)
class OffCpuRecording:
    stacks: dict[str, int]
    """Folded stacks, weighted by microseconds off CPU."""
    stopped_early: bool
    warnings: list[str]
    sampling_weight: int
    """1: every switch off the CPU was recorded; w: at busiest, one in w (weighted w)."""


async def record(
    plan: Plan, *, output: Path, stop: asyncio.Event, symbolizer: Symbolizer | None = None
) -> OffCpuRecording:
    """Run ``plan.bpftrace_argv`` until its own timer, ``stop``, or the timeout; keep its
    output in ``output``. User stacks are named through ``symbolizer`` (the CPU profiles'
    names: pclntab, debug files, inlined frames, frameless leaves' callers)."""
    argv = plan.bpftrace_argv
    with atomic_path(output) as part:
        with part.open("wb") as out:
            child = await _proc.Child.start(argv, stdout=out.fileno(), env={**os.environ, **ENV})
        rc, stderr, stopped_early = await run_to_end(child, plan, stop=stop, tool="bpftrace")
        text = await asyncio.to_thread(part.read_text, encoding="utf-8", errors="replace")
        if rc != 0 or '"@off"' not in text:
            raise _proc.ToolFailed(
                f"bpftrace failed: {_proc.tool_message(stderr, rc)}",
                argv=argv,
                returncode=rc,
                stderr=stderr,
            )
    user = UserStacks(symbolizer)
    stacks = await asyncio.to_thread(lambda: fold(parse_output(text), stack_names=user.frames))
    warnings = [
        ln.strip() for ln in stderr.splitlines() if ln.strip() and not any(n in ln for n in _NOISE)
    ]
    return OffCpuRecording(
        stacks=stacks,
        stopped_early=stopped_early,
        warnings=warnings[:20],
        sampling_weight=sampling_weight(text),
    )


def _feed(folder: PerfTimedFolder, lines: list[bytes]) -> None:
    for line in lines:
        folder.feed(line)


async def fold_perf(
    perf_data: Path, *, period: int, timeout: float, symbolizer: Symbolizer | None = None
) -> tuple[dict[str, int], TimedStats]:
    """``perf script`` of an off-CPU perf.data, streamed into time-weighted folded stacks.

    Run while the targets live: perf resolves their symbols through their /proc; the
    ``symbolizer`` names what perf cannot (as for CPU profiles).
    perf is killed and reaped on timeout, error or cancellation.
    """
    argv = perf_script_argv(str(perf_data))
    folder = PerfTimedFolder(period=period, symbolizer=symbolizer)
    child = await _proc.Child.start(argv)
    assert child.proc.stdout is not None
    errors = asyncio.ensure_future(_proc.drain_tail(child.proc.stderr, keep=_STDERR_KEEP))
    try:
        async with asyncio.timeout(timeout):
            # Parsing in a worker thread, a 64 KiB batch at a time: the event loop stays free.
            async for batch in _proc.line_batches(child.proc.stdout):
                await asyncio.to_thread(_feed, folder, batch)
            rc = await child.wait()
            stderr = (await errors).decode("utf-8", "replace")
    except TimeoutError:
        raise _proc.ToolTimeout(
            f"perf script did not finish within {timeout:g} s on {perf_data.name}", argv=argv
        ) from None
    finally:
        if child.returncode is None:
            await child.stop(signal.SIGKILL, grace=0)
        if not errors.done():
            errors.cancel()
            with contextlib.suppress(BaseException):
                await errors
    if rc != 0:
        raise _proc.ToolFailed(
            f"perf script failed: {_proc.tool_message(stderr, rc)}",
            argv=argv,
            returncode=rc,
            stderr=stderr,
        )
    return await asyncio.to_thread(folder.finish), folder.stats


_SCHED_SWITCH = ("events", "sched", "sched_switch")


async def dwarf_unavailable() -> str | None:
    """Why perf cannot record the targets' switches here (None: it can).

    perf finds the ``sched:sched_switch`` tracepoint through tracefs, which is not
    mounted at boot on every node (nor in a fresh container): mounted here when the
    agent may."""
    perf = await capabilities.perf()
    if not perf.get("available"):
        return f"perf is not available: {perf.get('reason')}"
    permitted = capabilities.perf_permitted()
    if not permitted.get("available"):
        return f"perf is not permitted: {permitted.get('reason')}"
    tracefs = await capabilities.ensure_tracefs()
    if not tracefs.get("available"):
        return str(tracefs.get("reason"))
    # Where perf looks: tracefs itself, or under debugfs (older mounts).
    roots = (capabilities.TRACEFS, Path("/sys/kernel/debug/tracing"))
    paths = [root.joinpath(*_SCHED_SWITCH) for root in roots]
    if not any([await asyncio.to_thread(p.is_dir) for p in paths]):
        return f"the kernel has no sched:sched_switch tracepoint ({paths[0]} is missing)"
    return None


def _switches(pid: int) -> int | None:
    """Context switches of all of ``pid``'s threads so far (None: it is gone)."""
    total = 0
    try:
        tasks = list((procfs.PROC / str(pid) / "task").iterdir())
    except OSError:
        return None
    for task in tasks:
        with contextlib.suppress(OSError):
            status = procfs.parse_status((task / "status").read_text())
            for key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
                total += int(status.get(key, "0") or 0)
    return total


async def switch_rates(pids: list[int]) -> dict[int, float]:
    """How many times a second each target's threads left the CPU, over a short window
    just now (what sets the DWARF recorder's sampling period)."""
    before = await asyncio.to_thread(lambda: {p: _switches(p) for p in pids})
    start = asyncio.get_running_loop().time()
    await asyncio.sleep(_RATE_WINDOW_S)
    after = await asyncio.to_thread(lambda: {p: _switches(p) for p in pids})
    seconds = max(asyncio.get_running_loop().time() - start, 1e-3)
    out: dict[int, float] = {}
    for p in pids:
        b, a = before.get(p), after.get(p)
        if b is not None and a is not None:
            out[p] = max(a - b, 0) / seconds
    return out
