""".NET trace and dump jobs' typed results (``Job[TraceResult]``, ``Job[DumpResult]``):
what the API and job.json show as they fill, read back as the models, and the one
write-and-watch loop of dumps driven by real writer processes (stand-ins for gcore,
createdump and jattach: our own seam, not the tools)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agent import _proc
from agent.app import create_app
from agent.dotnet import KIND as TRACE_KIND
from agent.dotnet import ProviderUsed, TraceResult
from agent.dumps import CORE, HPROF, DumpResult, Estimate, Service
from agent.dumps import KIND as DUMP_KIND
from agent.errors import Conflict
from agent.jobs import JobStore
from agent.settings import Settings

EST = Estimate(bytes=4096, free_bytes=1 << 40, limit_bytes=1 << 30)


def test_a_result_shows_only_what_the_job_has_found_out() -> None:
    r = TraceResult()
    assert r.model_dump(mode="json") == {}
    r.session_id = 7
    r.providers = [ProviderUsed(name="P", keywords="0x8", level=4, filter="")]
    r.bytes = 100
    # In the order the job learns them (the order of the dicts these replaced).
    assert r.model_dump_json() == (
        '{"session_id":7,"providers":[{"name":"P","keywords":"0x8","level":4,"filter":""}],'
        '"bytes":100}'
    )
    assert DumpResult(estimate=EST).model_dump(mode="json") == {"estimate": EST.model_dump()}


@pytest.mark.parametrize("model", [TraceResult, DumpResult])
def test_the_schema_says_each_fields_type_never_null_never_required(model: type) -> None:
    schema = model.model_json_schema(mode="serialization")
    assert "required" not in schema
    assert "null" not in json.dumps(schema["properties"]).replace('"default": null', "")


def test_job_json_reads_back_as_the_models(tmp_path: Path) -> None:
    store = JobStore(tmp_path, max_storage_bytes=1 << 30)
    trace = store.create(TRACE_KIND, {"pid": 1}, result=TraceResult(session_id=3))
    trace.result.events, trace.result.complete = 12, True
    dump = store.create(DUMP_KIND, {"pid": 1, "format": "core"}, result=DumpResult(estimate=EST))
    dump.result.written_bytes = 10
    for job in (trace, dump):
        job.state = "succeeded"
        store.save(job)
    saved = json.loads((dump.dir / "job.json").read_text())
    assert saved["result"] == {"estimate": EST.model_dump(), "written_bytes": 10}

    again = JobStore(tmp_path, max_storage_bytes=1 << 30)
    again.register(TRACE_KIND, TraceResult)
    again.register(DUMP_KIND, DumpResult)
    again.load()
    back_trace = again.get(TRACE_KIND, trace.id).result
    back_dump = again.get(DUMP_KIND, dump.id).result
    assert isinstance(back_trace, TraceResult) and back_trace == trace.result
    assert isinstance(back_dump, DumpResult) and back_dump == dump.result
    assert back_dump.model_dump(mode="json") == saved["result"]  # nothing unset shows


def test_the_views_answer_the_results_as_they_were_filled(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, auth="none"))
    jobs: JobStore = app.state.jobs
    dump = jobs.create(
        DUMP_KIND,
        {"pid": 42, "type": "full", "writer": "gdb gcore", "format": "core"},
        result=DumpResult(estimate=EST),
    )
    trace = jobs.create(TRACE_KIND, {"pid": 42}, result=TraceResult(session_id=1))
    client = TestClient(app)  # no lifespan: the views need no tool
    got = client.get(f"/dumps/{dump.id}").json()
    assert got["result"] == {"estimate": EST.model_dump()}
    assert got["links"] == {"self": f"/dumps/{dump.id}"}
    assert client.get(f"/dotnet/traces/{trace.id}").json()["result"] == {"session_id": 1}
    # Not written yet: each format's download says so; the other format's names the link.
    assert client.get(f"/dumps/{dump.id}/core").status_code == 409
    other = client.get(f"/dumps/{dump.id}/heap.hprof")
    assert other.status_code == 404 and f"/dumps/{dump.id}/core" in other.json()["detail"]


# --- the write-and-watch loop, with real writer processes -------------------------

_CORE_WRITER = """\
import sys
with open(sys.argv[-1], "wb") as f:
    f.write(b"x" * int(sys.argv[1]))
print("written")
"""

_HEAP_WRITER = """\
import sys
# jattach PID dumpheap FILE [-live|-all]: the JVM (here: this) writes FILE in its /tmp.
size = 3000
with open(sys.argv[3], "wb") as f:
    f.write(b"h" * size)
print("Connected to remote JVM")
print("JVM response code = 0")
print(f"Heap dump file created [{size} bytes in 0.001 secs]")
"""


def _writer(tmp_path: Path, name: str, code: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n{code}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def _service(tmp_path: Path) -> tuple[Service, JobStore]:
    jobs = JobStore(tmp_path / "data", max_storage_bytes=1 << 30)
    jobs.data_dir.mkdir(parents=True)
    return Service(jobs, max_storage_bytes=1 << 30, disk_free=lambda _p: 1 << 40), jobs


def test_a_core_dump_is_written_watched_and_moved_into_place(tmp_path: Path) -> None:
    svc, jobs = _service(tmp_path)
    writer = _writer(tmp_path, "createdump", _CORE_WRITER)
    job = jobs.create(DUMP_KIND, {"format": "core"}, result=DumpResult(estimate=EST))
    asyncio.run(svc._write_core(job, os.getpid(), [writer, "2048", "-f"], EST))
    assert job.artifact(CORE).read_bytes() == b"x" * 2048
    assert not job.artifact(CORE + ".part").exists()
    r = job.result
    assert r.argv == [writer, "2048", "-f", str(job.artifact(CORE + ".part"))]
    assert r.written_bytes == 2048 and r.output == "written\n"
    assert 0.0 < job.progress <= 0.99


def test_a_dump_past_its_ceiling_is_stopped_and_removed(tmp_path: Path) -> None:
    svc, jobs = _service(tmp_path)
    svc.max_storage_bytes = 1000  # the ceiling: the writer's 2048 bytes pass it
    writer = _writer(tmp_path, "createdump", _CORE_WRITER)
    job = jobs.create(DUMP_KIND, {"format": "core"}, result=DumpResult(estimate=EST))
    with pytest.raises(Conflict, match="passed"):
        asyncio.run(svc._write_core(job, os.getpid(), [writer, "2048", "-f"], EST))
    assert list(job.dir.iterdir()) == [job.dir / "job.json"]


def test_a_failing_writer_leaves_nothing(tmp_path: Path) -> None:
    svc, jobs = _service(tmp_path)
    writer = _writer(tmp_path, "gcore", "import sys\nprint('no such process', file=sys.stderr)\n")
    job = jobs.create(DUMP_KIND, {"format": "core"}, result=DumpResult(estimate=EST))
    with pytest.raises(_proc.ToolFailed, match="no such process"):
        asyncio.run(svc._write_core(job, os.getpid(), [writer, "-f"], EST))
    assert list(job.dir.iterdir()) == [job.dir / "job.json"]


def test_a_heap_dump_is_moved_from_the_apps_tmp(tmp_path: Path) -> None:
    # This process stands for the JVM: its /tmp (through /proc/PID/root) is the app's.
    svc, jobs = _service(tmp_path)
    writer = _writer(tmp_path, "jattach", _HEAP_WRITER)
    job = jobs.create(DUMP_KIND, {"format": "hprof"}, result=DumpResult(estimate=EST))
    pid = os.getpid()
    asyncio.run(svc._write_hprof(job, pid, [writer, str(pid), "dumpheap", "-live"], EST))
    assert job.artifact(HPROF).read_bytes() == b"h" * 3000
    assert not Path(f"/tmp/tracecar-heap-{job.id}.hprof").exists()
    assert job.result.output == "Heap dump file created [3000 bytes in 0.001 secs]"
    assert (
        job.result.argv is not None and job.result.argv[3] == f"/tmp/tracecar-heap-{job.id}.hprof"
    )
    assert job.progress == 1.0
