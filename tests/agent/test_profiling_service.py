"""profiling.Service bookkeeping that needs no recording (the folded-view locks)."""

from __future__ import annotations

import asyncio
import gc
from dataclasses import asdict
from pathlib import Path

from agent import profiling
from agent.jobs import JobStore
from agent.profiling.collapse import CollapseOptions
from agent.settings import Settings


def test_folded_view_locks_do_not_outlive_their_use(tmp_path: Path) -> None:
    jobs = JobStore(tmp_path, max_storage_bytes=1 << 30)
    svc = profiling.Service(Settings(data_dir=tmp_path), jobs)
    job = jobs.create(profiling.KIND, {})
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
