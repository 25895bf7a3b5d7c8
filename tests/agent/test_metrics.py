"""The agent's /metrics: what each service counts, and the endpoint behind the token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from agent import _proc, lttng, probes, profiling
from agent.app import create_app
from agent.jobs import JobStore
from agent.metrics import Metrics
from agent.probes._plan import Hit, Lost
from agent.probes._probe import Probe
from agent.probes._stream import EventStream
from agent.settings import Settings


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a text exposition, keyed by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    got = metrics.registry.get_sample_value(name, labels)
    return got


def _store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path, max_storage_bytes=1 << 30)


def test_drops_and_tool_runs_are_counted() -> None:
    m = Metrics()
    m.drop("probe_rate_limit")
    m.drop("probe_rate_limit", 4)
    m.drop("perf_lost", 0)  # nothing lost: nothing added
    m.observe_tool(["/usr/bin/perf", "record"], 1.5)
    m.observe_tool(["lttng", "list"], 0.02)
    assert value(m, "tracecar_agent_events_dropped_total", source="probe_rate_limit") == 5
    assert value(m, "tracecar_agent_events_dropped_total", source="perf_lost") == 0
    assert value(m, "tracecar_agent_tool_duration_seconds_count", tool="perf") == 1
    assert value(m, "tracecar_agent_tool_duration_seconds_sum", tool="perf") == 1.5
    assert value(m, "tracecar_agent_tool_duration_seconds_bucket", tool="lttng", le="0.05") == 1


def test_proc_tells_its_observers_each_child_run_time() -> None:
    seen: list[tuple[list[str], float]] = []

    def observe(argv: Any, seconds: float) -> None:
        seen.append((list(argv), seconds))

    _proc.add_observer(observe)
    try:
        asyncio.run(_proc.run(["sleep", "0.1"], timeout=10))
    finally:
        _proc.remove_observer(observe)
    asyncio.run(_proc.run(["true"], timeout=10))  # removed: not heard
    assert len(seen) == 1
    argv, seconds = seen[0]
    assert argv == ["sleep", "0.1"] and 0.09 <= seconds < 10


def test_profiles_running_failed_and_stored_bytes(tmp_path: Path) -> None:
    m = Metrics()
    jobs = _store(tmp_path)
    svc = profiling.Service(Settings(data_dir=tmp_path), jobs, metrics=m)
    job = jobs.create(profiling.KIND, {}, result=profiling.ProfileResult())
    job.artifact("perf.data").write_bytes(b"x" * 1000)
    assert value(m, "tracecar_agent_profiles_running") == 1  # pending counts as running
    assert value(m, "tracecar_agent_stored_bytes", capability="profiles") >= 1000  # type: ignore[operator]
    assert value(m, "tracecar_agent_storage_limit_bytes") == 1 << 30

    async def broken(*_: object) -> None:
        raise RuntimeError("perf record failed: boom")

    svc._run = broken  # type: ignore[method-assign]

    async def scenario() -> None:
        jobs.start(job, lambda j: svc._run_counted(j, None))  # type: ignore[arg-type]
        assert job.task is not None
        await job.task

    asyncio.run(scenario())
    assert job.state == "failed"
    assert value(m, "tracecar_agent_profiles_failed_total") == 1
    assert value(m, "tracecar_agent_profiles_running") == 0


def test_probe_drops_are_counted_as_they_happen(tmp_path: Path) -> None:
    m = Metrics()
    svc = probes.Service(Settings(data_dir=tmp_path), metrics=m)
    probe = Probe(
        id="0123abcd",
        request={},
        spec=None,
        backend="bpftrace",
        backend_reason="",
        plan={},
        stream=EventStream(capacity=16, rate=2),  # 2 events a second: the rest is dropped
        duration_s=1.0,
        max_events=100,
    )
    svc._probes[probe.id] = probe

    async def items() -> AsyncIterator[object]:
        for i in range(5):
            yield Hit({"n": i})
        yield Lost(7)

    assert value(m, "tracecar_agent_probes_running") == 1  # "starting"
    asyncio.run(svc._consume(probe, items()))
    assert value(m, "tracecar_agent_events_dropped_total", source="probe_rate_limit") == 3
    assert value(m, "tracecar_agent_events_dropped_total", source="probe_tracer_lost") == 7
    probe.state = "finished"
    assert value(m, "tracecar_agent_probes_running") == 0


def test_lttng_discarded_events_count_each_event_once(tmp_path: Path) -> None:
    m = Metrics()
    svc = lttng.Service(Settings(data_dir=tmp_path, lttng_start_sessiond=False), metrics=m)
    sess, _steps = svc.plan(lttng.SessionRequest.model_validate({"events": [{"domain": "python"}]}))
    svc._count_discarded(sess, 10)
    svc._count_discarded(sess, 10)  # the daemon's total, read twice: no new drops
    svc._count_discarded(sess, 25)
    assert value(m, "tracecar_agent_events_dropped_total", source="lttng_discarded") == 25
    svc._sessions[sess.id] = sess
    sess.dir.mkdir(parents=True)
    (sess.dir / "trace").write_bytes(b"y" * 300)
    sess.state = "active"
    assert value(m, "tracecar_agent_lttng_sessions_running") == 1
    assert value(m, "tracecar_agent_stored_bytes", capability="lttng") == 300


def test_metrics_endpoint_is_behind_the_token(tmp_path: Path) -> None:
    client = TestClient(create_app(Settings(data_dir=tmp_path, token="s3cret-metrics-token")))
    assert client.get("/metrics").status_code == 401
    r = client.get("/metrics", headers={"Authorization": "Bearer s3cret-metrics-token"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    got = samples(r.text)
    for kind in ("profiles", "probes", "lttng_sessions"):
        assert got[(f"tracecar_agent_{kind}_started_total", ())] == 0
        assert got[(f"tracecar_agent_{kind}_failed_total", ())] == 0
        assert (f"tracecar_agent_{kind}_running", ()) in got


def test_metrics_in_the_openapi_document(tmp_path: Path) -> None:
    doc = create_app(Settings(data_dir=tmp_path)).openapi()
    ok = doc["paths"]["/metrics"]["get"]["responses"]["200"]
    assert list(ok["content"]) == ["text/plain; version=0.0.4; charset=utf-8"]
    assert "401" in doc["paths"]["/metrics"]["get"]["responses"]
