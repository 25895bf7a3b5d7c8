"""The Python-frames leak profile's own parts: the code generated for the target (run
here in real interpreters, without injection), the files it writes, frame naming, and
the injector's refusals. The injection itself: tests/agent/test_python_memory_integration.py."""

from __future__ import annotations

import dataclasses
import os
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent.errors import Invalid
from agent.profiling import _pyinject, memplan, pymem
from agent.profiling.planner import ProfileRequest
from tests.interpreters import PY38, PY312
from tests.profiling_pure.support import GLIBC, memory_plan, python_target


def _token() -> str:
    return secrets.token_hex(8)


def test_generated_code_takes_validated_values_only() -> None:
    token = _token()
    code = pymem.start_code(token=token, directory="/tmp", frames=16, deadline_s=60)
    compile(code, "x", "exec")
    assert code.startswith("__import__('builtins').exec(")  # never in the app's __main__
    for bad in ("../x", "ABCDEF0123456789", "0123", token + "'"):
        with pytest.raises(ValueError, match="token"):
            pymem.start_code(token=bad, directory="/tmp", frames=16, deadline_s=60)
    with pytest.raises(ValueError, match="directory"):
        pymem.finish_code(token=token, directory="/srv", give_up_at=0)
    with pytest.raises(ValueError, match="frames"):
        pymem.start_code(token=token, directory="/tmp", frames=0, deadline_s=60)
    with pytest.raises(ValueError, match="token"):
        pymem.file_names("x")
    assert pymem.file_names(token)["library"] == f"tracecar-pymem-{token}.so"


APP = """
import sys, time
CACHE = []
def grow():
    CACHE.append(bytearray(4096))
def churn():
    junk = [bytearray(4096) for _ in range(4)]
    del junk
exec(START)
deadline = time.time() + 30
while "ok" not in open(STATUS).read() if __import__("os").path.exists(STATUS) else True:
    assert time.time() < deadline
    time.sleep(0.01)
for _ in range(200):
    grow(); churn()
exec(FINISH)
while not __import__("os").path.exists(OUT):
    assert time.time() < deadline
    time.sleep(0.01)
import tracemalloc
def nthreads():
    return open("/proc/self/status").read().split("Threads:")[1].split()[0]
while nthreads() != "1" and time.time() < deadline + 40:
    time.sleep(0.02)  # the watchdog and the dump thread end by themselves
threads = nthreads()
print("tracing", tracemalloc.is_tracing(), "threads", threads,
      "state", [k for k in vars(tracemalloc) if k.startswith("_tracecar")],
      "main", sorted(k for k in vars(sys.modules["__main__"]) if "tracecar" in k.lower()))
"""


@pytest.mark.parametrize("python", [PY312, PY38, sys.executable], ids=["3.12", "3.8", "agent"])
@pytest.mark.parametrize("already", [False, True], ids=["started", "app-traces"])
def test_generated_code_in_a_real_interpreter(python: str, already: bool) -> None:
    """Start, then finish, in one process: the stacks, and nothing left (no state, no
    watchdog thread, tracing as it was; nothing in the app's __main__)."""
    if not os.path.exists(python):
        pytest.skip(f"{python} is not here")
    token = _token()
    names = {k: f"/tmp/{v}" for k, v in pymem.file_names(token).items()}
    start = pymem.start_code(token=token, directory="/tmp", frames=8, deadline_s=60)
    finish = pymem.finish_code(token=token, directory="/tmp", give_up_at=time.time() + 60)
    src = (
        f"START = {start!r}\nFINISH = {finish!r}\n"
        f"STATUS = {names['status']!r}\nOUT = {names['output']!r}\n" + APP
    )
    try:
        run = subprocess.run(
            [python, *(["-X", "tracemalloc=3"] if already else []), "-c", src],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        status = pymem.parse_status(Path(names["status"]).read_text())
        out = pymem.parse_output(Path(names["output"]).read_text())
    finally:
        for p in names.values():
            for q in (p, p + ".part"):
                Path(q).unlink(missing_ok=True)
    assert status.ok and status.already is already and status.tid > 0, status
    assert status.frames == (3 if already else 8)
    assert not out.error and out.started is not already, out
    last = run.stdout.strip().splitlines()[-1]
    assert last == f"tracing {already} threads 1 state [] main []", last
    lines = src.splitlines()
    at_grow = f"<string>:{lines.index('    CACHE.append(bytearray(4096))') + 1}"
    in_churn = {f"<string>:{n}" for n in (lines.index("def churn():") + 1 + i for i in range(3))}
    grow = sum(b for f, (b, _) in out.stacks.items() if f[-1] == at_grow)
    churn = sum(b for f, (b, _) in out.stacks.items() if in_churn & set(f))
    total = sum(b for b, _ in out.stacks.values())
    assert grow >= 200 * 4096 and grow >= 0.9 * total, out.stacks
    assert churn <= (1024 if python == PY38 else 0), out.stacks
    assert all("<tracecar-pymem>" not in ";".join(f) for f in out.stacks), "our own frames"


def test_abort_stops_what_was_started_and_writes_nothing() -> None:
    token = _token()
    names = {k: f"/tmp/{v}" for k, v in pymem.file_names(token).items()}
    start = pymem.start_code(token=token, directory="/tmp", frames=4, deadline_s=60)
    src = textwrap.dedent(f"""
        import os, time, tracemalloc
        exec({start!r})
        while not os.path.exists({names["status"]!r}):
            time.sleep(0.01)
        assert tracemalloc.is_tracing()
        exec({pymem.abort_code(token=token)!r})
        give_up = time.time() + 50
        def threads():
            return open("/proc/self/status").read().split("Threads:")[1].split()[0]
        while threads() != "1" and time.time() < give_up:
            time.sleep(0.02)  # the watchdog, woken, returns
        print(tracemalloc.is_tracing(), threads())
    """)
    try:
        run = subprocess.run(
            [sys.executable, "-c", src], capture_output=True, text=True, timeout=60
        )
    finally:
        Path(names["status"]).unlink(missing_ok=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "1"]
    assert not os.path.exists(names["output"])


def test_watchdog_undoes_everything_when_the_agent_never_comes_back() -> None:
    token = _token()
    names = {k: f"/tmp/{v}" for k, v in pymem.file_names(token).items()}
    start = pymem.start_code(token=token, directory="/tmp", frames=4, deadline_s=1)
    src = textwrap.dedent(f"""
        import os, time, tracemalloc
        exec({start!r})
        def threads():
            return open("/proc/self/status").read().split("Threads:")[1].split()[0]
        give_up = time.time() + 50  # the deadline is 1 s: this only bounds a stuck run
        while time.time() < give_up and (
            tracemalloc.is_tracing() or os.path.exists({names["status"]!r}) or threads() != "1"
        ):
            time.sleep(0.05)
        print(tracemalloc.is_tracing(), threads(), os.path.exists({names["status"]!r}))
    """)
    run = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "1", "False"]


def test_parse_status_and_output() -> None:
    st = pymem.parse_status(
        "tracecar-pymem 1\npython 3.12.1\ncwd /app\nalready 0\nframes 16\ntid 42\nok\n"
    )
    assert st.ok and st.python == "3.12.1" and st.cwd == "/app" and st.tid == 42
    bad = pymem.parse_status("tracecar-pymem 1\nerror RuntimeError: no\n")
    assert not bad.ok and bad.error == "RuntimeError: no"
    assert pymem.parse_status("something else\nok\n").error
    out = pymem.parse_output(
        "tracecar-pymem 1\nstarted 1\ntraced 100 200\noverhead 5\nstacks 3\n"
        "/app/a b.py:3;/app/c.py:9 4096 1\n/app/a b.py:3;/app/c.py:9 10 2\n"
        "/x.py:1 -5 1\n[other stacks] 7 1\ngarbage\n"
    )
    assert out.traced_bytes == 100 and out.traced_peak_bytes == 200 and out.overhead_bytes == 5
    assert out.stacks == {("/app/a b.py:3", "/app/c.py:9"): (4106, 3), ("[other stacks]",): (7, 1)}
    assert pymem.parse_output("tracecar-pymem 1\nerror boom\n").error == "boom"


SOURCE = """\
import functools

def outer():
    def inner():
        return [bytearray(10)]
    return inner()

class Cache:
    @functools.lru_cache
    def put(self, k):
        return bytearray(k)

x = bytearray(5)
"""


def test_frames_are_named_by_the_innermost_def() -> None:
    idx = pymem.FunctionIndex(SOURCE)
    assert idx.at(5) == "outer.<locals>.inner"
    assert idx.at(6) == "outer"
    assert idx.at(9) == "Cache.put" and idx.at(11) == "Cache.put"
    assert idx.at(13) == "<module>"
    assert pymem.FunctionIndex("def (:\n").at(1) == "<module>"  # unparsable: module level
    stacks = {
        ("/app/m.py:13", "/app/m.py:6", "/app/m.py:5"): (100, 2),
        ("<frozen importlib._bootstrap>:241", "/gone.py:3"): (7, 1),
    }
    by_bytes, by_count = pymem.fold(
        stacks,
        comm="my app",
        read_source=lambda p: SOURCE if p == "/app/m.py" else None,
    )
    assert by_bytes == {
        "my_app;[python];<module> (/app/m.py:13);outer (/app/m.py:6);"
        "outer.<locals>.inner (/app/m.py:5)": 100,
        "my_app;[python];<frozen importlib._bootstrap>:241;/gone.py:3": 7,
    }
    assert sum(by_count.values()) == 3


def test_injector_refuses_what_is_not_its_own_library(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["1", "/etc/passwd", "1"],
        ["1", "/tmp/tracecar-pymem-0123456789abcdef.so.x", "1"],
        ["1", "/srv/tracecar-pymem-0123456789abcdef.so", "1"],
        ["x", "/tmp/tracecar-pymem-0123456789abcdef.so", "1"],
    ):
        assert _pyinject.main(argv) == _pyinject.BAD_ARGS, argv
    assert '"ok": false' in capsys.readouterr().out
    assert _pyinject.main(["1", "/tmp/tracecar-pymem-0123456789abcdef.so", "soon"]) == 2


def test_injector_finds_no_process() -> None:
    missing = 4_194_304  # above any pid_max
    code = _pyinject.main([str(missing), "/tmp/tracecar-pymem-0123456789abcdef.so", "0"])
    assert code == _pyinject.GONE


def test_our_threads_take_no_signal_of_the_app() -> None:
    """The watchdog is born with every signal blocked: a process-directed signal goes to
    the app's threads (were it handled on ours, a main thread blocked in pause() would
    not wake: seen once in the bench before this). No warning either (-W error here)."""
    token = _token()
    names = {k: f"/tmp/{v}" for k, v in pymem.file_names(token).items()}
    start = pymem.start_code(token=token, directory="/tmp", frames=4, deadline_s=60)
    src = textwrap.dedent(f"""
        import os, time
        exec({start!r})
        while not os.path.exists({names["status"]!r}):
            time.sleep(0.01)
        def blocked(t):
            with open(f"/proc/self/task/{{t}}/status") as f:
                return f.read().split("SigBlk:")[1].split()[0]
        print(blocked(os.getpid()), *[blocked(t) for t in os.listdir("/proc/self/task")
                                     if int(t) != os.getpid()])
        exec({pymem.abort_code(token=token)!r})
    """)
    try:
        run = subprocess.run(
            [sys.executable, "-W", "error", "-c", src], capture_output=True, text=True, timeout=60
        )
    finally:
        Path(names["status"]).unlink(missing_ok=True)
    assert run.returncode == 0 and not run.stderr, run.stderr
    main, *ours = run.stdout.split()
    assert int(main, 16) == 0 and len(ours) == 1, run.stdout
    # Every signal but SIGKILL, SIGSTOP (never blockable) and glibc's own 32 and 33.
    mask = int(ours[0], 16)
    assert all(mask & (1 << (s - 1)) for s in range(1, 65) if s not in (9, 19, 32, 33)), hex(mask)


# --- the plan ------------------------------------------------------------------------------


def test_plan_python_frames_only_runs_no_bpftrace() -> None:
    p = memory_plan(ProfileRequest(type="leak", pid=7, python_frames=8), [python_target(7)])
    assert p.memory is not None and p.memory.python is not None
    assert p.memory.python.frames == 8
    assert [t.model_dump() for t in p.memory.python.targets] == [{"pid": 7, "directory": "/tmp"}]
    assert p.program == "" and p.bpftrace_argv == [] and p.pids == [7]
    assert p.memory.targets[0].allocator is None and p.memory.targets[0].sees == pymem.SEES
    assert p.memory.sampling.startswith("none: tracemalloc")
    assert not any("traps into the kernel" in n for n in p.memory.notes), p.memory.notes


def test_plan_mixes_python_frames_and_the_c_allocator_view() -> None:
    native = memplan.MemoryTargetFacts(9, "srv", "native", dataclasses.replace(GLIBC, pid=9))
    no = python_target(
        8, directory=None, why="a musl libc process: the injection library is built for glibc"
    )
    p = memory_plan(ProfileRequest(type="leak", pids=[7, 8, 9]), [python_target(7), no, native])
    assert p.memory is not None and p.memory.python is not None
    assert [t.pid for t in p.memory.python.targets] == [7]
    assert "@__t[8] = 1;" in p.program and "@__t[9] = 1;" in p.program
    assert "@__t[7]" not in p.program, "a Python-frames target is not bpftrace's"
    assert p.pids == [7, 8, 9] and p.bpftrace_argv[0] == "bpftrace"
    assert any("pid 8 (python3): no Python frames (a musl" in n for n in p.memory.notes)
    # alloc: Python frames too (the sampler: tests/agent/test_pyalloc_unit.py).
    a = memory_plan(ProfileRequest(type="alloc", pid=7), [python_target(7)])
    assert a.memory is not None and a.memory.python is not None and a.program == ""
    # python_frames 0: the C-allocator view asked for, for a process that could be entered.
    c = memory_plan(ProfileRequest(type="leak", pid=7, python_frames=0), [python_target(7)])
    assert c.memory is not None and c.memory.python is None and "@__t[7] = 1;" in c.program
    assert "pymalloc" in c.memory.targets[0].sees and c.memory.targets[0].allocator == "glibc"


def test_python_frames_applies_to_memory_profiles_only() -> None:
    for req in (
        ProfileRequest(type="cpu", pid=7, python_frames=8),
        ProfileRequest(type="off-cpu", pid=7, python_frames=0),
    ):
        with pytest.raises(Invalid, match="python_frames applies to alloc and leak"):
            memory_plan(req, [python_target(7)])


def test_a_thread_waiting_on_a_pipe_is_at_a_safe_point() -> None:
    app = subprocess.Popen(
        [sys.executable, "-c", "import os; r, w = os.pipe(); print(1, flush=True); os.read(r, 1)"],
        stdout=subprocess.PIPE,
    )
    try:
        assert app.stdout is not None and app.stdout.readline().strip() == b"1"
        deadline = time.monotonic() + 30
        while (nr := _pyinject.syscall_of(app.pid, app.pid)) is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert _pyinject.WAITS["x86_64"].get(nr) == "read" or os.uname().machine != "x86_64"
    finally:
        app.kill()
        app.wait()


def test_an_end_without_a_start_says_so_in_its_file_and_prints_nothing() -> None:
    token = _token()
    out = f"/tmp/{pymem.file_names(token)['output']}"
    finish = pymem.finish_code(token=token, directory="/tmp", give_up_at=time.time() + 60)
    src = f"exec({finish!r})\nexec({pymem.abort_code(token=token)!r})\n"
    try:
        run = subprocess.run(
            [sys.executable, "-W", "error", "-c", src], capture_output=True, text=True, timeout=60
        )
        said = pymem.parse_output(Path(out).read_text())
    finally:
        Path(out).unlink(missing_ok=True)
    assert run.returncode == 0 and run.stdout == "" and run.stderr == "", run
    assert "state is gone" in said.error, said
