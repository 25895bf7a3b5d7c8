"""perf record's own start race, with the real perf on a real app whose workers end.

With ``-p``, perf 6.1 gives up with status 255 and nothing on stderr when a thread of
the target exits after perf opened its events and before perf wrote that thread's
COMM record. It was seen once in a loaded run, profiling a .NET app ("perf record
failed: exited with status 255 and printed nothing on stderr"); an app whose threads
live 50-400 ms loses about three starts in four to it here. The window is perf
reading /proc/kallsyms (about 0.1 s): ``perf_start_race.Racer`` stops the real perf
there (SIGSTOP), ends the app's workers and lets perf go on, so the race happens every
time, busy machine or not. perf runs with the agent's own argv, unwrapped. (Upstream perf skips
such a thread since Cruz Zhao's "perf: ignore exited thread when synthesize thread
map"; Debian's 6.1 predates it.)
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import _proc
from agent.probes import _perfprobe
from agent.probes._plan import Hit, Spec
from agent.profiling import perf_record
from agent.profiling.perf_record import record, restart_note
from agent.profiling.planner import Plan
from tests.agent.perf_start_race import Racer, end_workers, start_workers
from tests.agent.workloads import WORKERS_ON_DEMAND_C, compile_c
from tests.conftest import need
from tests.probes.support import our_uprobes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def app_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("perf", "gcc")
    return compile_c(WORKERS_ON_DEMAND_C, tmp_path_factory.mktemp("workers") / "workers")


@pytest.fixture
def app(app_binary: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([str(app_binary)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


def perf_argv(pid: int, output: Path, *extra: str) -> list[str]:
    return ["perf", "record", *extra, "-F", "99", "-g", "-p", str(pid), "-o", str(output)]


def plan_of(argv: list[str], pid: int) -> Plan:
    return Plan(
        argv=[*argv, "--", "sleep", "1"],
        pids=[pid],
        target=f"pid {pid}",
        duration_s=1,
        frequency_hz=99,
        call_graph="fp",
        call_graph_reason="frame pointers (test)",
        timeout_s=120,
        unresolved=[],
    )


def test_perf_itself_stops_silently_when_a_thread_exits_at_its_start(
    app: subprocess.Popen[str], tmp_path: Path
) -> None:
    out = tmp_path / "perf.data"
    for extra in [(), ("-v",)]:
        with Racer(app.pid, races=1) as racer:
            done = subprocess.run(
                [*perf_argv(app.pid, out, *extra), "--", "sleep", "1"],
                capture_output=True,
                text=True,
                timeout=300,
            )
        assert racer.raced == 1 and done.returncode == 255, done.stderr
        assert "Captured and wrote" not in done.stderr
        if not extra:
            # What the agent sees: the race, and nothing else, on stderr.
            assert _proc.perf_lost_a_thread_at_start(done.returncode, done.stderr), done.stderr
        else:
            # perf -v names the cause: a thread it had opened was gone when it wrote it.
            assert "couldn't open /proc/" in done.stderr, done.stderr


def test_record_starts_perf_again_and_says_so(app: subprocess.Popen[str], tmp_path: Path) -> None:
    out = tmp_path / "perf.data.part"
    with Racer(app.pid, races=1) as racer:
        plan = plan_of(perf_argv(app.pid, out), app.pid)
        rec = asyncio.run(record(plan, output=out, stop=asyncio.Event()))
    assert racer.raced == 1
    assert rec.restarts == 1 and rec.samples is not None and out.stat().st_size > 0
    assert "started again 1 time(s)" in restart_note(rec)
    assert "nothing is missing" in restart_note(rec)
    # perf moves an output it finds to <output>.old: the agent removed the first one.
    assert sorted(p.name for p in tmp_path.iterdir() if "perf.data" in p.name) == [out.name]


def test_record_gives_up_after_its_restarts_and_says_why(
    app: subprocess.Popen[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(perf_record, "START_RACE_RETRIES", 2)  # 3 races, not 11: time
    out = tmp_path / "perf.data.part"
    with Racer(app.pid, races=99) as racer, pytest.raises(_proc.ToolFailed) as failed:
        plan = plan_of(perf_argv(app.pid, out), app.pid)
        asyncio.run(record(plan, output=out, stop=asyncio.Event()))
    message = str(failed.value)
    assert racer.raced == 3
    assert "stopped at its start 3 times in a row" in message, message
    assert "a thread of the target exited" in message and "try again" in message
    assert not (tmp_path / "perf.data.part.old").exists()


def probe_session(app: subprocess.Popen[str], binary: Path, tmp_path: Path) -> _perfprobe.Session:
    """The perf-probe backend's session on the app's ``worker``, entered by each new
    worker thread: ``perf probe -a``, then ``perf record -p | perf script``."""
    spec = Spec(
        pid=app.pid,
        binary=str(binary),
        host_binary=str(binary),
        function="worker",
        address=None,
        mode="events",
        of="calls",
        args=(),
        retval=False,
        retval_type="int",
        stack=False,
        duration_s=60,
        max_events=100,
    )
    group = f"tracecar_race{app.pid}"  # one of the test's own: swept by its own check
    # A random id, as the agent's: perf probe refuses an event name that exists in any
    # group, and a fixed one failed (status 239, EEXIST) when two suites ran this at once.
    probe_id = secrets.token_hex(4)
    plan = _perfprobe.plan(spec, group=group, probe_id=probe_id, control_dir=str(tmp_path / "ctl"))
    return _perfprobe.Session(spec, plan)


def test_a_perf_probe_starts_perf_again_and_misses_no_hit(
    app: subprocess.Popen[str], app_binary: Path, tmp_path: Path
) -> None:
    session = probe_session(app, app_binary, tmp_path)

    async def run() -> list[Hit]:
        with Racer(app.pid, races=1) as racer:
            await session.start()
        assert racer.raced == 1 and session.restarts == 1
        try:
            # The events were never enabled before perf's last start: the four new
            # workers' entries are all there.
            await asyncio.to_thread(end_workers, app.pid)
            await asyncio.to_thread(start_workers, app.pid)
            hits: list[Hit] = []
            async with asyncio.timeout(120):
                async for item in session.items():
                    if isinstance(item, Hit):
                        hits.append(item)
                        if len(hits) == 4:
                            break
            return hits
        finally:
            await session.stop()

    hits = asyncio.run(run())
    assert len(hits) == 4 and all(h.event.get("pid") == app.pid for h in hits), hits
    note = session.note()
    assert note is not None and "started again 1 time(s)" in note and "no hit is missing" in note
    assert our_uprobes(f"tracecar_race{app.pid}") == []
    assert not (tmp_path / "ctl").exists()


def test_a_perf_probe_gives_up_after_its_restarts_and_says_why(
    app: subprocess.Popen[str],
    app_binary: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_perfprobe, "START_RACE_RETRIES", 2)
    session = probe_session(app, app_binary, tmp_path)
    with Racer(app.pid, races=99) as racer, pytest.raises(_proc.ToolFailed) as failed:
        asyncio.run(session.start())
    message = str(failed.value)
    assert racer.raced == 3 and session.restarts == 2
    assert "stopped at its start 3 times in a row" in message and "try again" in message
    # Nothing left: no perf, no events in tracefs, no control FIFOs.
    assert our_uprobes(f"tracecar_race{app.pid}") == []
    assert not (tmp_path / "ctl").exists()
