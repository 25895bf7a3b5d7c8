"""JobStore start-up sweep: a crashed run's jobs, and directories that are not jobs."""

from __future__ import annotations

import json
from pathlib import Path

from agent.jobs import JobStore


def test_load_sweeps_jobs_but_leaves_other_state_alone(tmp_path: Path) -> None:
    running = tmp_path / "profile" / "0123456789ab"
    running.mkdir(parents=True)
    (running / "job.json").write_text(
        json.dumps({"id": "0123456789ab", "kind": "profile", "params": {}, "state": "running"})
    )
    (running / "perf.data.part").write_bytes(b"half")
    broken = tmp_path / "profile" / "ba9876543210"
    broken.mkdir()
    # The LTTng service keeps its daemon's home (log, built sink plugin) beside its sessions.
    home = tmp_path / "lttng" / "_home" / "plugins"
    home.mkdir(parents=True)

    store = JobStore(tmp_path, max_storage_bytes=1 << 30)
    store.load()

    job = store.get("profile", "0123456789ab")
    assert job.state == "failed"
    assert job.error == "the agent restarted while this job was running"
    assert not (running / "perf.data.part").exists()
    assert not broken.exists()
    assert home.is_dir()


def test_a_registered_kind_reads_its_result_back_as_its_model(tmp_path: Path) -> None:
    from agent.profiling import KIND, ProfileResult, Unresolved

    store = JobStore(tmp_path, max_storage_bytes=1 << 30)
    store.register(KIND, ProfileResult)
    job = store.create(KIND, {}, result=ProfileResult(samples=7, notes=["a note"]))
    job.result.unresolved = Unresolved(
        samples_with_unresolved_frames=1, fraction=0.5, by_object={}, reasons=[], perf_maps_used=[]
    )
    job.state = "succeeded"
    store.save(job)

    again = JobStore(tmp_path, max_storage_bytes=1 << 30)
    again.register(KIND, ProfileResult)
    again.load()
    back = again.get(KIND, job.id).result
    assert isinstance(back, ProfileResult) and back == job.result
