"""Which tool takes the snapshot, and its command line: pure, no process is touched.

One tool per kind of stack, chosen for what it shows *from the sidecar*, where
the target's files exist only in its own mount namespace:

* Python: ``py-spy dump`` reads the interpreter's frames from memory; it finds the
  interpreter's binary through /proc/PID/root, so a script that exists only in
  the app container is shown with its file and line. Without ``--nonblocking``
  it pauses the process while it reads (about 10 ms here): a consistent
  snapshot is what a "what is it doing" dump wants.
* Java: ``jattach PID threaddump`` (the JVM's own thread dump, what ``jstack``
  prints) enters the JVM's namespaces itself, so a JVM in another container
  answers.
* Everything else (native, Go, Node, .NET, or a forced ``runtime=native``):
  ``gdb -batch -p PID -ex 'thread apply all bt'``. Not elfutils' ``eu-stack``:
  Debian 12's eu-stack (0.188) opens the target's executable by its path in
  the *agent's* mount namespace, so a binary that exists only in the app
  container shows bare addresses (seen here: ``#1 0x555d10d5e162`` for
  ``blocked_here``). gdb, given ``set sysroot /proc/PID/root``, reads the
  target's executable and libraries through that root and names them. (Without
  a sysroot gdb enters the target's mount namespace through a helper process of
  its own, which it leaves a zombie for the PID namespace's init to reap: a
  pod's pause does, the app running as PID 1 where an attached agent lives may
  not. Seen here: one zombie per snapshot.) Its libthread_db is the
  agent's own (``$sdir``), never one from the target's filesystem: that one
  would be loaded into gdb, code of the app's choosing run in the agent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.errors import Conflict, Invalid, Unavailable
from agent.procfs import Runtime
from agent.stacks._model import Kind, RequestedRuntime, Tool

HOW_TO_GET: dict[Tool, str] = {
    "py-spy": "py-spy is a dependency of the agent's Python package (pip install py-spy); "
    "the agent image has it next to the agent's Python",
    "jattach": "install jattach (Debian: apt-get install jattach); the agent image has it",
    "gdb": "install gdb (Debian: apt-get install gdb); the agent image has it",
}

# gdb, quiet and predictable: no ~/.gdbinit and no auto-loaded scripts (a target's
# files must not run code in the agent), no debuginfod downloads (no network, and
# a download would blow the timeout), one line per frame, arguments shown as
# `(...)` (values are noise here and can be slow to read).
GDB_ARGS = (
    "-nx",
    "-batch",
    "-iex",
    "set auto-load off",
    "-iex",
    "set debuginfod enabled off",
    "-ex",
    "set pagination off",
    "-ex",
    "set width unlimited",
    "-ex",
    "set print frame-arguments presence",
    "-ex",
    "set print thread-events off",
)
MAX_FRAMES = 256
"""Per thread (gdb): a runaway recursion still answers."""

_TOOL_OF: dict[Kind, Tool] = {
    "python": "py-spy",
    "python+native": "py-spy",
    "java": "jattach",
    "native": "gdb",
}

_NATIVE_NOTES: dict[Runtime, str] = {
    "go": "Go: the stacks of the program's threads, not of its goroutines: a goroutine "
    "parked by the scheduler (on a channel, a mutex, time.Sleep) is on no thread's stack; "
    "the program's own /debug/pprof/goroutine?debug=2 lists every goroutine",
    "node": "Node.js: JavaScript runs as JIT code gdb has no symbols for (`??` frames); "
    "the inspector (node --inspect) shows JavaScript stacks",
    "python": "native frames of the interpreter: the Python functions are inside "
    "_PyEval_EvalFrameDefault; runtime=auto shows them (native=true: both)",
    "java": "native frames of the JVM: Java methods are JIT or interpreter code (`??` "
    "frames); runtime=auto shows them",
    "dotnet": ".NET: gdb unwinds the native frames; from the first JIT-compiled frame "
    "(no symbol, no unwind information) the stack is walked by its frame pointers, and "
    "managed methods are named from the runtime's perf map /tmp/perf-PID.map when it "
    "writes one (COMPlus_PerfMapEnabled=1; DOTNET_ from .NET 5), else they stay `??`",
}

# .NET: gdb's own unwinder is lost in JIT code (no symbols, no CFI: it reads stack
# slots as frames), so from the first frame without a symbol the walk follows the frame
# pointers instead (JIT'd code keeps them, as perf's -g relies on too). Runs in gdb's
# own Python; prints one TRACECAR-THREAD line per thread and one TRACECAR-FRAME line
# per frame (address, then gdb's `info symbol` answer or the function's name).
DOTNET_WALK = """\
import gdb, struct
inf = gdb.selected_inferior()
def sym(pc):
    try:
        return gdb.execute("info symbol 0x%x" % pc, to_string=True).strip()
    except gdb.error:
        return "??"
for th in sorted(inf.threads(), key=lambda t: t.ptid[1]):
    th.switch()
    print("TRACECAR-THREAD %d %s" % (th.ptid[1], th.name or ""))
    f = gdb.newest_frame()
    n = 0
    while f is not None and n < LIMIT:
        pc = f.pc()
        if f.name() is None and f.type() == gdb.NORMAL_FRAME:
            fp = int(f.read_register("rbp"))
            print("TRACECAR-FRAME 0x%x %s" % (pc, sym(pc)))
            n += 1
            while fp and fp % 8 == 0 and n < LIMIT:
                try:
                    nfp, ret = struct.unpack("<QQ", inf.read_memory(fp, 16).tobytes())
                except gdb.MemoryError:
                    break
                if ret == 0:
                    break
                print("TRACECAR-FRAME 0x%x %s" % (ret, sym(ret)))
                n += 1
                if nfp <= fp:
                    break
                fp = nfp
            break
        lib = gdb.solib_name(pc) or ""
        print("TRACECAR-FRAME 0x%x %s in section .text of %s" % (pc, f.name() or "??", lib))
        n += 1
        try:
            f = f.older()
        except gdb.error:
            break
"""


@dataclass(frozen=True, slots=True)
class Plan:
    pid: int
    runtime: Runtime
    kind: Kind
    tool: Tool
    argv: tuple[str, ...]
    text: bool
    notes: tuple[str, ...] = ()


def choose_kind(pid: int, runtime: Runtime, requested: RequestedRuntime, native: bool) -> Kind:
    """The kind of stacks for this process and request (409 when it is not that runtime)."""
    if requested == "auto":
        requested = "python" if runtime == "python" else "java" if runtime == "java" else "native"
    if requested in ("python", "java") and runtime != requested:
        other = {"python": "Python", "java": "Java"}[requested]
        raise Conflict(
            f"pid {pid} is not a {other} process: its runtime is {runtime} (from its "
            "executable and mappings, as GET /processes/{pid} shows); use runtime=auto, "
            "or runtime=native for the native stacks of any process",
            runtime=runtime,
        )
    if native and requested != "python":
        raise Invalid(
            "native=true mixes C frames into Python stacks (py-spy --native), so it needs "
            f"a Python process; pid {pid} is {runtime} and gets "
            f"{'Java' if requested == 'java' else 'native'} stacks already",
            field="native",
        )
    if requested == "python":
        return "python+native" if native else "python"
    if requested == "java":
        return "java"
    return "native"


def plan(
    pid: int,
    runtime: Runtime,
    *,
    requested: RequestedRuntime = "auto",
    native: bool = False,
    text: bool = False,
    tools: Mapping[Tool, str | None],
) -> Plan:
    """The snapshot's tool and argv; ``tools`` maps each tool to its path (None: missing)."""
    kind = choose_kind(pid, runtime, requested, native)
    tool = _TOOL_OF[kind]
    exe = tools.get(tool)
    if exe is None:
        raise Unavailable(
            f"{tool} is not installed here, and {kind} stacks need it: {HOW_TO_GET[tool]}",
            tool=tool,
        )
    argv: tuple[str, ...]
    if tool == "py-spy":
        argv = (exe, "dump", "--pid", str(pid))
        if not text:
            argv += ("--json",)
        if kind == "python+native":
            argv += ("--native",)
    elif tool == "jattach":
        argv = (exe, str(pid), "threaddump")
    else:
        walk = (
            ("-ex", "python exec(" + repr(DOTNET_WALK.replace("LIMIT", str(MAX_FRAMES))) + ")")
            if runtime == "dotnet" and kind == "native"
            else ("-ex", f"thread apply all bt {MAX_FRAMES}")
        )
        argv = (
            exe,
            "-iex",
            f"set sysroot /proc/{pid}/root",
            "-iex",
            "set libthread-db-search-path $sdir",
            *GDB_ARGS,
            "-p",
            str(pid),
            *walk,
        )
    notes = (_NATIVE_NOTES[runtime],) if kind == "native" and runtime in _NATIVE_NOTES else ()
    return Plan(pid, runtime, kind, tool, argv, text, notes)
