"""profiling.Service bookkeeping that needs no recording (the folded-view locks, the
off-CPU fallback and notes)."""

from __future__ import annotations

import asyncio
import gc
import os
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from agent import profiling
from agent.errors import Unavailable
from agent.jobs import JobStore
from agent.profiling import _offcpu_run
from agent.profiling._service import _dwarf_notes
from agent.profiling.offcpu_fold import TimedStats
from agent.profiling.perf_record import Recording
from agent.profiling.planner import Plan, ProfileRequest
from agent.settings import Settings
from tracecar_formats.collapse import CollapseOptions


def test_folded_view_locks_do_not_outlive_their_use(tmp_path: Path) -> None:
    jobs = JobStore(tmp_path, max_storage_bytes=1 << 30)
    svc = profiling.Service(Settings(data_dir=tmp_path), jobs)
    job = jobs.create(profiling.KIND, {}, result=profiling.ProfileResult())
    job.state = "succeeded"
    options = CollapseOptions(pid=True)
    # Already computed: served from the job directory without running perf script.
    key = "".join(f"{k}{int(v)}" for k, v in sorted(asdict(options).items()))
    cached = job.artifact(f"folded-{key}.txt")
    cached.write_text("a;b 1\n")

    assert asyncio.run(svc.folded(job, options)) == cached
    gc.collect()
    # Evicted or deleted by the job store, a profile must leave no lock behind.
    assert len(svc._folded_locks) == 0


def test_offcpu_falls_back_to_frame_pointers_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_tracefs() -> str:
        return "tracefs is not mounted and mounting it needs CAP_SYS_ADMIN"

    monkeypatch.setattr(_offcpu_run, "dwarf_unavailable", no_tracefs)
    svc = profiling.Service(
        Settings(data_dir=tmp_path), JobStore(tmp_path, max_storage_bytes=1 << 30)
    )
    me = os.getpid()  # a live process: the planner's facts are real
    plan = asyncio.run(svc.create(ProfileRequest(type="off-cpu", pid=me), dry_run=True))
    assert isinstance(plan, Plan) and plan.call_graph == "fp" and plan.argv == []
    (choice,) = plan.unwinding
    assert choice.tool == "bpftrace" and "CAP_SYS_ADMIN" in choice.reason
    assert "missing" in choice.reason and choice.fallback  # what is lost, in words
    with pytest.raises(Unavailable, match="call_graph fp or auto"):
        asyncio.run(
            svc.create(ProfileRequest(type="off-cpu", pid=me, call_graph="dwarf"), dry_run=True)
        )


def test_offcpu_switch_rates_of_a_live_process() -> None:
    rates = asyncio.run(_offcpu_run.switch_rates([os.getpid(), 4_194_304]))
    assert set(rates) == {os.getpid()} and rates[os.getpid()] >= 0  # a gone pid: left out


def test_dwarf_notes_say_what_was_lost_or_weighted() -> None:
    rec = Recording(returncode=0, samples=10, lost=3, stopped_early=False, warnings=[], stderr="")
    stats = TimedStats(stacks=10, matched=7, open_at_end=1, unmatched=2, cut_short=4)
    notes = " | ".join(_dwarf_notes(rec, stats, 5))
    assert "perf lost 3 chunk(s)" in notes and "one switch-out in 5" in notes
    assert "2 of 10 switch-outs had no switch-in" in notes
    assert "4 of 10 stacks stop before the thread's first frame" in notes
    assert _dwarf_notes(replace(rec, lost=0), TimedStats(stacks=3, matched=3), 1) == []
