"""The stack snapshot's planner and parsers, without the tools.

The parsers read outputs the real tools printed here (tests/stacks/data, made by
tests/stacks/capture.py; its README says how); the integration tests run the
tools live.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.errors import Conflict, Invalid, Unavailable
from agent.stacks import _parse
from agent.stacks._model import ThreadStack, Tool
from agent.stacks._plan import plan
from agent.stacks._service import summarise
from tests.stacks.workloads import C_BLOCKED, JAVA_SLEEPER, PY_BLOCKED

DATA = Path(__file__).parent / "data"
META: dict[str, Any] = json.loads((DATA / "meta.json").read_text())
TOOLS: dict[Tool, str | None] = {
    "py-spy": "/venv/bin/py-spy",
    "jattach": "/usr/bin/jattach",
    "gdb": "/usr/bin/gdb",
}


def out(name: str) -> str:
    return (DATA / f"{name}.out").read_text()


def line_of(source: str, text: str) -> int:
    return source.splitlines().index(text) + 1


def names(t: ThreadStack) -> list[str]:
    return [f.function for f in t.frames]


def thread(threads: list[ThreadStack], name: str) -> ThreadStack:
    return next(t for t in threads if t.name == name)


# --- the plan -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("runtime", "kind", "tool"),
    [
        ("python", "python", "py-spy"),
        ("java", "java", "jattach"),
        ("native", "native", "gdb"),
        ("go", "native", "gdb"),
        ("node", "native", "gdb"),
        ("dotnet", "native", "gdb"),
    ],
)
def test_auto_picks_the_runtime_s_own_tool(runtime: Any, kind: str, tool: str) -> None:
    p = plan(42, runtime, tools=TOOLS)
    assert (p.kind, p.tool, p.argv[0]) == (kind, tool, TOOLS[p.tool])


def test_py_spy_argv() -> None:
    assert plan(42, "python", tools=TOOLS).argv == (
        "/venv/bin/py-spy", "dump", "--pid", "42", "--json",
    )  # fmt: skip
    # Blocking on purpose (no --nonblocking): the process is paused for a consistent snapshot.
    assert plan(42, "python", text=True, tools=TOOLS).argv[1:] == ("dump", "--pid", "42")
    native = plan(42, "python", native=True, tools=TOOLS)
    assert native.kind == "python+native" and native.argv[-1] == "--native"


def test_gdb_argv_reads_the_target_s_files_and_runs_none_of_them() -> None:
    argv = plan(42, "go", tools=TOOLS).argv
    assert argv[:5] == (
        "/usr/bin/gdb", "-iex", "set sysroot /proc/42/root",
        "-iex", "set libthread-db-search-path $sdir",
    )  # fmt: skip
    assert "-nx" in argv and "-batch" in argv and "set auto-load off" in argv
    assert "set debuginfod enabled off" in argv
    assert argv[-4:] == ("-p", "42", "-ex", "thread apply all bt 256")


def test_jattach_argv() -> None:
    assert plan(42, "java", tools=TOOLS).argv == ("/usr/bin/jattach", "42", "threaddump")


def test_forcing_native_works_on_anything_with_a_note() -> None:
    for runtime in ("python", "java", "go", "node"):
        p = plan(42, runtime, requested="native", tools=TOOLS)  # type: ignore[arg-type]
        assert p.tool == "gdb" and p.notes, runtime
    assert plan(42, "native", requested="native", tools=TOOLS).notes == ()


@pytest.mark.parametrize(("requested", "runtime"), [("python", "native"), ("java", "go")])
def test_forcing_another_runtime_is_409_naming_the_real_one(requested: Any, runtime: Any) -> None:
    with pytest.raises(Conflict) as e:
        plan(42, runtime, requested=requested, tools=TOOLS)
    assert f"its runtime is {runtime}" in e.value.detail and "runtime=native" in e.value.detail
    assert e.value.extra == {"runtime": runtime}


def test_native_frames_are_for_python_only() -> None:
    with pytest.raises(Invalid) as e:
        plan(42, "java", native=True, tools=TOOLS)
    assert e.value.extra["field"] == "native"


@pytest.mark.parametrize(
    ("runtime", "tool"), [("python", "py-spy"), ("java", "jattach"), ("go", "gdb")]
)
def test_a_missing_tool_is_503_saying_how_to_get_it(runtime: Any, tool: Tool) -> None:
    with pytest.raises(Unavailable) as e:
        plan(42, runtime, tools={**TOOLS, tool: None})
    assert e.value.detail.startswith(f"{tool} is not installed here")
    assert "install" in e.value.detail and e.value.extra == {"tool": tool}


# --- py-spy -----------------------------------------------------------------------------

PY_LINE = line_of(PY_BLOCKED, "    time.sleep(100000)")


def test_py_spy_json() -> None:
    threads = _parse.pyspy_json(out("pyspy"))
    assert sorted(t.tid for t in threads if t.tid) == META["tids"]["py"]
    main = thread(threads, "MainThread")
    assert main.tid == META["pids"]["py"] and main.state == "idle"
    assert names(main) == ["wait_here", "main", "<module>"]
    assert (main.frames[0].file, main.frames[0].line) == ("/srv/wait.py", PY_LINE)
    assert main.frames[0].module is None
    assert names(thread(threads, "helper"))[:2] == ["worker_loop", "Thread.run"]


def test_py_spy_json_with_native_frames() -> None:
    main = thread(_parse.pyspy_json(out("pyspy-native")), "MainThread")
    n = names(main)
    assert n.index("time_sleep") < n.index("wait_here") < n.index("main")
    sleep = main.frames[n.index("time_sleep")]
    assert sleep.module and sleep.module.endswith("libpython3.12.so.1.0")
    assert sleep.file is None and sleep.line is None
    # An unresolved native frame (py-spy names it by its address) is `??` with the address.
    unknown = [f for f in main.frames if f.function == "??"]
    assert unknown and all(f.address and f.address.startswith("0x") for f in unknown)


def test_py_spy_text_and_garbage() -> None:
    assert _parse.pyspy_text(out("pyspy-text")) == out("pyspy-text")
    for bad in ("", "not json", "{}"):
        with pytest.raises(_parse.Unparsable):
            _parse.pyspy_json(bad)
    with pytest.raises(_parse.Unparsable):
        _parse.pyspy_text("")


def test_py_spy_error_summary_drops_its_rust_backtrace() -> None:
    said = summarise((DATA / "pyspy-on-c.err").read_text(), 1)
    assert said == "Error: Failed to find python version from target process"


# --- gdb ----------------------------------------------------------------------------------


def test_gdb_c() -> None:
    threads = _parse.gdb(out("gdb-c"))
    assert [t.tid for t in threads] == META["tids"]["c"]  # the main thread first
    main = threads[0]
    assert main.name == "blocked" and main.state is None
    n = names(main)
    assert n[n.index("blocked_here") + 1] == "main"
    at = main.frames[n.index("blocked_here")]
    assert at.file and at.file.endswith("/b.c")
    assert at.line == line_of(C_BLOCKED, "    for (;;) pause();")
    assert at.address and at.address.startswith("0x")
    assert names(threads[1])[:4] == [
        "__GI___clock_nanosleep", "__GI___nanosleep", "__sleep", "worker",
    ]  # fmt: skip


def test_gdb_go() -> None:
    threads = _parse.gdb(out("gdb-go"))
    assert [t.tid for t in threads] == META["tids"]["go"]
    n = names(threads[0])
    assert n[n.index("main.blockedHere") + 1] == "main.main"
    # Frame 0 and inlined frames have no pc of their own.
    assert threads[0].frames[0].address is None
    assert all(t.name == "goblocked" for t in threads)


def test_gdb_python_process_shows_the_interpreter() -> None:
    threads = _parse.gdb(out("gdb-python"))
    assert [t.tid for t in threads] == META["tids"]["py"]
    assert "_PyEval_EvalFrameDefault" in names(threads[0])
    assert "wait_here" not in names(threads[0])


def test_gdb_text_keeps_the_backtraces_only() -> None:
    text = _parse.gdb_text(out("gdb-c"))
    assert text.startswith("Thread 2 (Thread 0x") and "[Inferior" not in text
    assert "[New LWP" not in text and " in blocked_here () at " in text
    with pytest.raises(_parse.Unparsable):
        _parse.gdb_text("ptrace: No such process.\n")
    assert _parse.gdb("") == []


def test_gdb_error_summary_drops_missing_source_lines() -> None:
    err = (DATA / "gdb-c.err").read_text()
    assert "No such file or directory" in err
    assert summarise(err, 0) == "exited with status 0 and printed nothing on stderr"


# --- jattach ------------------------------------------------------------------------------


def test_jattach_threaddump() -> None:
    threads = _parse.jattach(out("jattach"))
    assert {t.tid for t in threads} <= set(META["tids"]["java"])
    sleeper = thread(threads, "sleeper-thread")
    assert sleeper.state == "TIMED_WAITING (sleeping)"
    assert names(sleeper)[:3] == [
        "java.lang.Thread.sleep",
        "Sleeper.waitHere",
        "Sleeper.lambda$main$0",
    ]
    native, wait = sleeper.frames[:2]
    assert native.module and native.module.startswith("java.base@17") and native.file is None
    assert (wait.file, wait.line, wait.module) == (
        "Sleeper.java", line_of(JAVA_SLEEPER, "        Thread.sleep(1000000000L);"), None,
    )  # fmt: skip
    main = thread(threads, "main")
    # The launcher's first thread only waits for the JVM: Java's "main" is a thread of its own.
    assert main.tid != META["pids"]["java"] and main.state == "WAITING (on object monitor)"
    assert names(main)[-1] == "Sleeper.main"
    # The JVM's own threads: listed, without Java frames.
    assert thread(threads, "VM Thread").frames == []


def test_jattach_text_is_the_jvm_s_dump() -> None:
    text = _parse.jattach_text(out("jattach"))
    assert "Connected to remote JVM" not in text and "JVM response code" not in text
    assert text.splitlines()[1].startswith("Full thread dump OpenJDK")
    with pytest.raises(_parse.Unparsable):
        _parse.jattach_text("Connected to remote JVM\nJVM response code = 0\n")
