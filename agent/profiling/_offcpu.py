"""Execution of a planned off-CPU recording: run bpftrace, keep its output, fold it.

Owned here: starting bpftrace through :mod:`agent._proc` (own process group, a
timeout of duration + slack, always reaped), stopping it early with SIGINT
(bpftrace then runs END, which prints the map: what was recorded is kept),
writing its JSON output as the profile's raw artifact, and folding it with the
targets' symbols (read while they still run: an exited process's frames show as
``[unknown]``).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from agent import _proc, symbols
from agent.jobs import atomic_path
from agent.profiling.offcpu import ENV, fold, parse_output, sampling_weight
from agent.profiling.planner import Plan
from agent.profiling.recorder import run_to_end

# bpftrace's RLIMIT_MEMLOCK warning is harmless (the kernel accounts BPF memory by cgroup).
_NOISE = ("RLIMIT_MEMLOCK", "Attaching ")


@dataclass(frozen=True, slots=True)
class OffCpuRecording:
    stacks: dict[str, int]
    """Folded stacks, weighted by microseconds off CPU."""
    stopped_early: bool
    warnings: list[str]
    sampling_weight: int
    """1: every switch off the CPU was recorded; w: at busiest, one in w (weighted w)."""


async def record(plan: Plan, *, output: Path, stop: asyncio.Event) -> OffCpuRecording:
    """Run ``plan.argv`` until its own timer, ``stop``, or the timeout; keep its output."""
    with atomic_path(output) as part:
        with part.open("wb") as out:
            child = await _proc.Child.start(
                plan.argv, stdout=out.fileno(), env={**os.environ, **ENV}
            )
        rc, stderr, stopped_early = await run_to_end(child, plan, stop=stop, tool="bpftrace")
        text = await asyncio.to_thread(part.read_text, encoding="utf-8", errors="replace")
        if rc != 0 or '"@off"' not in text:
            raise _proc.ToolFailed(
                f"bpftrace failed: {_proc.tool_message(stderr, rc)}",
                argv=plan.argv,
                returncode=rc,
                stderr=stderr,
            )
    stacks = await asyncio.to_thread(lambda: fold(parse_output(text), names=symbols.function_names))
    warnings = [
        ln.strip() for ln in stderr.splitlines() if ln.strip() and not any(n in ln for n in _NOISE)
    ]
    return OffCpuRecording(
        stacks=stacks,
        stopped_early=stopped_early,
        warnings=warnings[:20],
        sampling_weight=sampling_weight(text),
    )
