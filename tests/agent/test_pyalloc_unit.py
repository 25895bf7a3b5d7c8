"""The Python-frames alloc profile's own parts: the sampler (pyalloc_sampler.c, built here
with gcc and driven by the code generated for the target, run in real interpreters
without injection), the files it writes, their folding, and the plan. The injection
itself: tests/agent/test_python_alloc_integration.py."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent.profiling import _pysampler, memplan, pyalloc, pymem
from agent.profiling.planner import ProfileRequest
from tests.interpreters import PY38, PY39, PY312, PY313
from tests.profiling_pure.support import GLIBC, LIMITS, memory_plan, python_target


def _token() -> str:
    return secrets.token_hex(8)


@pytest.fixture(scope="module")
def sampler(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not here")
    build = tmp_path_factory.mktemp("sampler")
    lib, how = asyncio.run(_pysampler._build(build))
    assert lib is not None, how
    return lib


def test_generated_code_takes_validated_values_only() -> None:
    token = _token()
    code = pyalloc.start_code(
        token=token, directory="/tmp", frames=16, interval=65536, deadline_s=60
    )
    compile(code, "x", "exec")
    assert code.startswith("__import__('builtins').exec(")  # never in the app's __main__
    assert f"/tmp/tracecar-pymem-{token}.sampler.so" in code
    for bad in ("../x", "ABCDEF0123456789", token + "'"):
        with pytest.raises(ValueError, match="token"):
            pyalloc.start_code(token=bad, directory="/tmp", frames=16, interval=65536, deadline_s=1)
    with pytest.raises(ValueError, match="directory"):
        pyalloc.finish_code(token=token, directory="/srv", interval=65536, give_up_at=0)
    with pytest.raises(ValueError, match="frames"):
        pyalloc.start_code(token=token, directory="/tmp", frames=0, interval=65536, deadline_s=1)
    with pytest.raises(ValueError, match="interval"):
        pyalloc.start_code(token=token, directory="/tmp", frames=8, interval=10, deadline_s=1)
    assert pyalloc.sampler_name(token) == f"tracecar-pymem-{token}.sampler.so"


APP = """
import os, sys, time
CACHE = []
def grow():
    CACHE.append(bytes(4096))
def churn():
    for _ in range(8):
        b = bytes(4096)
        del b
exec(START)
deadline = time.time() + 30
while not (os.path.exists(STATUS) and "ok" in open(STATUS).read()):
    assert time.time() < deadline, open(STATUS).read() if os.path.exists(STATUS) else "none"
    time.sleep(0.01)
for _ in range(4000):
    grow(); churn()
exec(FINISH)
while not os.path.exists(OUT):
    assert time.time() < deadline
    time.sleep(0.01)
def nthreads():
    return open("/proc/self/status").read().split("Threads:")[1].split()[0]
while nthreads() != "1" and time.time() < deadline + 40:
    time.sleep(0.02)  # the watchdog and the dump thread end by themselves
print("size", sys.getsizeof(bytes(4096)), "threads", nthreads(),
      "state", [k for k in vars(sys) if k.startswith("_tracecar")],
      "mapped", "sampler.so" in open("/proc/self/maps").read(),
      "main", sorted(k for k in vars(sys.modules["__main__"]) if "tracecar" in k.lower()))
"""


def _run(python: str, sampler: Path, *, interval: int) -> tuple[str, pymem.Status, pyalloc.Output]:
    token = _token()
    names = {k: f"/tmp/{v}" for k, v in pymem.file_names(token).items()}
    copy = Path("/tmp") / pyalloc.sampler_name(token)
    shutil.copyfile(sampler, copy)
    start = pyalloc.start_code(
        token=token, directory="/tmp", frames=8, interval=interval, deadline_s=60
    )
    finish = pyalloc.finish_code(
        token=token, directory="/tmp", interval=interval, give_up_at=time.time() + 60
    )
    src = (
        f"START = {start!r}\nFINISH = {pyalloc.stop_code(token=token) + finish!r}\n"
        f"STATUS = {names['status']!r}\nOUT = {names['output']!r}\n" + APP
    )
    try:
        run = subprocess.run([python, "-c", src], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        status = pymem.parse_status(Path(names["status"]).read_text())
        out = pyalloc.parse_output(Path(names["output"]).read_text())
    finally:
        for p in [*names.values(), str(copy)]:
            for q in (p, p + ".part"):
                Path(q).unlink(missing_ok=True)
    return run.stdout.strip().splitlines()[-1], status, out


@pytest.mark.parametrize(
    "python", [PY312, PY39, PY313, sys.executable], ids=["3.12", "3.9", "3.13", "agent"]
)
def test_the_sampler_in_a_real_interpreter(python: str, sampler: Path) -> None:
    """Start, then finish, in one process: each function's bytes within 10% of what it
    allocated, and nothing left (no state, no thread, the library unloaded)."""
    if not os.path.exists(python):
        pytest.skip(f"{python} is not here")
    interval = 8192
    last, status, out = _run(python, sampler, interval=interval)
    assert status.ok and status.frames == 8 and status.tid > 0, status
    assert not out.error and not out.replaced and out.interval == interval, out
    size = int(last.split()[1])
    assert last.endswith("threads 1 state [] mapped False main []"), last
    grow = sum(b for f, (b, _) in out.stacks.items() if f.split(";")[-1].startswith("grow ("))
    churn = sum(b for f, (b, _) in out.stacks.items() if f.split(";")[-1].startswith("churn ("))
    assert abs(grow - 4000 * size) <= 0.1 * 4000 * size, (grow, 4000 * size)
    assert abs(churn - 32000 * size) <= 0.1 * 32000 * size, (churn, 32000 * size)
    assert out.calls >= 36000 and out.bytes >= 36000 * size, out
    # The estimate of everything against the exact bytes the wrappers counted: the end
    # stops the sampler before its own code is compiled (here: exec() of the two at once).
    total = sum(b for b, _ in out.stacks.values())
    assert abs(total - out.bytes) <= 0.05 * out.bytes, (total, out.bytes)
    # One sample at most per allocation, taken with p = 1 - exp(-size/interval) (0.4 here).
    assert out.samples >= 0.8 * 36000 * (1 - math.exp(-size / interval)), out
    assert all("<tracecar-pymem>" not in f for f in out.stacks), "our own frames"
    assert all(f.startswith("<module> (<string>:") for f in out.stacks), list(out.stacks)


def test_older_python_is_refused_in_its_status(sampler: Path) -> None:
    if not os.path.exists(PY38):
        pytest.skip(f"{PY38} is not here")
    token = _token()
    names = {k: f"/tmp/{v}" for k, v in pymem.file_names(token).items()}
    start = pyalloc.start_code(token=token, directory="/tmp", frames=8, interval=8192, deadline_s=5)
    try:
        run = subprocess.run(
            [PY38, "-c", f"exec({start!r})"], capture_output=True, text=True, timeout=60
        )
        status = pymem.parse_status(Path(names["status"]).read_text())
    finally:
        Path(names["status"]).unlink(missing_ok=True)
    assert run.returncode == 0 and run.stdout == run.stderr == "", run
    assert not status.ok and "needs CPython 3.9 or later" in status.error, status


def test_abort_and_watchdog_restore_the_allocators_and_unload(sampler: Path) -> None:
    """Aborted (a discarded profile), or left to its watchdog (the agent gone): the
    allocators restored, the thread gone, the state attribute gone (a second start in
    the process works again); the library unloaded, except by the watchdog, which
    leaves it mapped and unused (an unload from its thread could deadlock with an
    injection arriving at that moment)."""
    for how in ("abort", "watchdog"):
        token = _token()
        names = {k: f"/tmp/{v}" for k, v in pymem.file_names(token).items()}
        copy = Path("/tmp") / pyalloc.sampler_name(token)
        shutil.copyfile(sampler, copy)
        start = pyalloc.start_code(
            token=token,
            directory="/tmp",
            frames=4,
            interval=8192,
            deadline_s=60 if how == "abort" else 1,
        )
        end = f"exec({pyalloc.abort_code(token=token)!r})" if how == "abort" else "pass"
        src = textwrap.dedent(f"""
            import os, sys, time
            exec({start!r})
            while not os.path.exists({names["status"]!r}):
                time.sleep(0.01)
            assert "sampler.so" in open("/proc/self/maps").read()
            x = [bytes(1000) for _ in range(1000)]
            {end}
            give_up = time.time() + 50
            def threads():
                return open("/proc/self/status").read().split("Threads:")[1].split()[0]
            while time.time() < give_up and (threads() != "1" or hasattr(sys, "_tracecar_pyalloc")):
                time.sleep(0.02)
            if {how!r} == "abort":
                assert "sampler.so" not in open("/proc/self/maps").read()
            print(threads(), "sampler.so" in open("/proc/self/maps").read(),
                  hasattr(sys, "_tracecar_pyalloc"))
        """)
        try:
            run = subprocess.run(
                [sys.executable, "-c", src], capture_output=True, text=True, timeout=60
            )
        finally:
            for p in (names["status"], str(copy)):
                Path(p).unlink(missing_ok=True)
        assert run.returncode == 0, (how, run.stderr)
        mapped = "True" if how == "watchdog" else "False"
        assert run.stdout.split() == ["1", mapped, "False"], (how, run.stdout)
        assert not os.path.exists(names["output"])


def test_parse_output_and_fold() -> None:
    out = pyalloc.parse_output(
        "tracecar-pyalloc 1\ninterval 524288\ncalls 100\nbytes 5000\nsamples 3\ndropped 1\n"
        "truncated 0\nreplaced 0\nstacks 2\n"
        "<module> (/srv/app.py:3);churn (/srv/app.py:9) 1048576 2048\n"
        "<module> (/srv/app.py:4);grow (/srv/app.py:12) 524288 100\n"
        "garbage\n"
        "<module> (/srv/app.py:4);grow (/srv/app.py:12) 10 1\n"
    )
    assert (out.interval, out.calls, out.bytes, out.samples, out.dropped) == (
        524288,
        100,
        5000,
        3,
        1,
    )
    assert out.stack_count == 2 and not out.replaced and not out.error
    assert out.stacks["<module> (/srv/app.py:4);grow (/srv/app.py:12)"] == (524298, 101)
    by_bytes, by_count = pyalloc.fold(out.stacks, comm="my app")
    assert by_bytes == {
        "my_app;[python];<module> (/srv/app.py:3);churn (/srv/app.py:9)": 1048576,
        "my_app;[python];<module> (/srv/app.py:4);grow (/srv/app.py:12)": 524298,
    }
    assert sum(by_count.values()) == 2149
    # Before 3.11 (co_name only): the sources give the qualified name, as for leak.
    src = "class Cache:\n    def get(self):\n        return [0] * 9\n"
    named, _ = pyalloc.fold(
        {"<module> (/a.py:9);get (/a.py:3);<listcomp> (/a.py:3)": (8, 1), "x (<string>:1)": (1, 1)},
        comm="p",
        read_source=lambda path: src if path == "/a.py" else None,
    )
    assert named == {
        "p;[python];<module> (/a.py:9);Cache.get (/a.py:3);<listcomp> (/a.py:3)": 8,
        "p;[python];x (<string>:1)": 1,
    }
    assert pyalloc.parse_output("something else\n").error
    assert pyalloc.parse_output("tracecar-pyalloc 1\nerror boom\n").error == "boom"
    assert pyalloc.parse_output("tracecar-pyalloc 1\nreplaced 1\n").replaced


# --- the plan ------------------------------------------------------------------------------


_LIMITS = dataclasses.replace(LIMITS, python_alloc_interval_bytes=65536)


def test_plan_alloc_in_python_frames() -> None:
    p = memory_plan(
        ProfileRequest(type="alloc", pid=7, python_frames=8), [python_target(7)], limits=_LIMITS
    )
    assert p.memory is not None and p.memory.python is not None
    py = p.memory.python
    assert py.frames == 8 and py.interval_bytes == 65536 and py.how == memplan.ALLOC_HOW
    assert py.sampling == pyalloc.sampling(65536) and "p = 1 - exp(-s/65536)" in py.sampling
    assert p.program == "" and p.bpftrace_argv == [] and p.pids == [7]
    assert p.memory.targets[0].allocator is None and p.memory.targets[0].sees == pyalloc.SEES
    assert p.memory.sampling.startswith("Python frames: one sample per 65536 bytes")
    assert any("the wrappers cost every allocation" in n for n in p.memory.notes)
    assert not any("tracemalloc" in n for n in p.memory.notes), p.memory.notes


def test_plan_alloc_mixes_python_frames_and_the_c_view() -> None:
    native = memplan.MemoryTargetFacts(9, "srv", "native", dataclasses.replace(GLIBC, pid=9))
    old = python_target(8, directory=None, why="CPython older than 3.9 (no PyThreadState_GetFrame)")
    p = memory_plan(
        ProfileRequest(type="alloc", pids=[7, 8, 9]),
        [python_target(7), old, native],
        limits=_LIMITS,
    )
    assert p.memory is not None and p.memory.python is not None
    assert [t.pid for t in p.memory.python.targets] == [7]
    assert "@__t[8] = 1;" in p.program and "@__t[9] = 1;" in p.program
    assert "@__t[7]" not in p.program
    assert any("pid 8 (python3): no Python frames (CPython older" in n for n in p.memory.notes)
    assert "pymalloc" in p.memory.targets[1].sees
    # python_frames 0: the C-allocator view asked for.
    c = memory_plan(
        ProfileRequest(type="alloc", pid=7, python_frames=0), [python_target(7)], limits=_LIMITS
    )
    assert c.memory is not None and c.memory.python is None and "@__t[7] = 1;" in c.program


def test_sampler_locate_says_why_not(tmp_path: Path) -> None:
    (tmp_path / _pysampler.LIBRARY).write_bytes(b"not an ELF")
    assert _pysampler._check(tmp_path / _pysampler.LIBRARY) is not None
    assert "No such file" in str(_pysampler._check(tmp_path / "nothing.so"))


def test_allocators_replaced_during_the_window_stay_working(sampler: Path) -> None:
    """The app starts tracemalloc during the window (its hooks wrap the sampler's): the
    end cannot take the sampler's out without breaking them, so they stay as pure
    pass-through, the library loaded, and the output says so; the app keeps allocating,
    and stopping tracemalloc later works."""
    token = _token()
    names = {k: f"/tmp/{v}" for k, v in pymem.file_names(token).items()}
    copy = Path("/tmp") / pyalloc.sampler_name(token)
    shutil.copyfile(sampler, copy)
    start = pyalloc.start_code(
        token=token, directory="/tmp", frames=4, interval=8192, deadline_s=60
    )
    finish = pyalloc.finish_code(
        token=token, directory="/tmp", interval=8192, give_up_at=time.time() + 60
    )
    src = textwrap.dedent(f"""
        import os, sys, time, tracemalloc
        exec({start!r})
        while not os.path.exists({names["status"]!r}):
            time.sleep(0.01)
        tracemalloc.start()
        x = [bytes(1000) for _ in range(5000)]
        exec({pyalloc.stop_code(token=token) + finish!r})
        x = [bytes(1000) for _ in range(5000)]
        tracemalloc.stop()
        x = [bytes(1000) for _ in range(50000)]
        print("sampler.so" in open("/proc/self/maps").read(), hasattr(sys, "_tracecar_pyalloc"))
    """)
    try:
        run = subprocess.run(
            [sys.executable, "-c", src], capture_output=True, text=True, timeout=60
        )
        out = pyalloc.parse_output(Path(names["output"]).read_text())
    finally:
        for p in [*names.values(), str(copy)]:
            Path(p).unlink(missing_ok=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["True", "False"], run.stdout
    assert out.replaced and not out.error and out.samples > 0, out
