"""The .NET stack walk's output (gdb's Python, agent.stacks._plan.DOTNET_WALK) parsed,
and JIT frames named from a perf map: pure, on text seen from a real 3.1 runtime."""

from __future__ import annotations

from agent.stacks import _parse
from agent.stacks._plan import plan

WALK = """\
[New LWP 7613]
TRACECAR-THREAD 7609 dotnet
TRACECAR-FRAME 0x7fdea3a5621b No symbol matches 0x7fdea3a5621b.
TRACECAR-FRAME 0x7fdea3a561d7 No symbol matches 0x7fdea3a561d7.
TRACECAR-FRAME 0x7fdf1ce4e2df CallDescrWorker + 124 in section .text of /proc/7609/root/fw/a.so
TRACECAR-THREAD 7613 dotnet
TRACECAR-FRAME 0x7fdf1dcfa26f __GI___poll in section .text of /proc/7609/root/lib/libc.so.6
[Inferior 1 (process 7609) detached]
"""


def test_walk_parsed() -> None:
    main, other = _parse.gdb_walk(WALK)
    assert (main.tid, main.name) == (7609, "dotnet")
    assert [f.function for f in main.frames] == ["??", "??", "CallDescrWorker"]
    assert main.frames[2].module == "/fw/a.so" and main.frames[0].address == "0x7fdea3a5621b"
    assert other.frames[0].function == "__GI___poll"
    text = _parse.walk_text([main])
    assert text.splitlines()[0] == 'Thread (LWP 7609) "dotnet":'
    assert "#2  0x7fdf1ce4e2df in CallDescrWorker () from /fw/a.so" in text


def test_dotnet_plan_walks_by_frame_pointers() -> None:
    p = plan(7, "dotnet", tools={"gdb": "/usr/bin/gdb"})
    assert p.argv[-2] == "-ex" and p.argv[-1].startswith("python exec(")
    assert "thread apply all bt" not in " ".join(p.argv)
    assert any("perf map" in n for n in p.notes)
    native = plan(7, "native", tools={"gdb": "/usr/bin/gdb"})
    assert native.argv[-1].startswith("thread apply all bt")
