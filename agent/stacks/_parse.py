"""Each tool's output into :class:`ThreadStack` lists, and the text kept for ``format=text``.

Pure functions of the tools' stdout, so they are unit-tested on outputs captured
from the real tools (tests/stacks/data, with how each was made).
"""

from __future__ import annotations

import json
import re
from typing import Any

from agent.stacks._model import Frame, ThreadStack


class Unparsable(ValueError):
    """The output is not what this tool prints for a snapshot."""


# --- py-spy dump --json -------------------------------------------------------------


def pyspy_json(out: str) -> list[ThreadStack]:
    """``py-spy dump --json``: a list of threads, frames innermost first.

    Native frames (``--native``) carry their shared object in ``module`` and
    line 0; their ``filename`` is that same object, not a source file.
    """
    try:
        data = json.loads(out)
    except json.JSONDecodeError as e:
        raise Unparsable(f"py-spy printed no JSON ({e})") from e
    if not isinstance(data, list):
        raise Unparsable("py-spy's JSON is not a list of threads")
    threads = [_pyspy_thread(t) for t in data if isinstance(t, dict)]
    # py-spy lists threads in no useful order; the main thread (tid = pid) first, as gdb's.
    threads.sort(key=lambda t: t.tid if t.tid is not None else 0)
    return threads


def _pyspy_thread(t: dict[str, Any]) -> ThreadStack:
    state = "active" if t.get("active") else "idle"
    if t.get("owns_gil"):
        state += "+gil"
    frames = []
    for f in t.get("frames") or []:
        module = f.get("module")
        name = str(f.get("name") or "??")
        address = None
        if module and re.fullmatch(r"0x[0-9a-f]+", name):
            name, address = "??", name
        line = f.get("line")
        frames.append(
            Frame(
                function=name,
                file=None if module else f.get("filename"),
                line=line if isinstance(line, int) and line > 0 else None,
                module=module,
                address=address,
            )
        )
    tid = t.get("os_thread_id")
    return ThreadStack(
        tid=tid if isinstance(tid, int) else None,
        name=t.get("thread_name"),
        state=state,
        frames=frames,
    )


def pyspy_text(out: str) -> str:
    """``py-spy dump`` (text): kept as it is, once it is seen to hold threads."""
    if not re.search(r"^Thread ", out, re.M):
        raise Unparsable("py-spy printed no thread")
    return out


# --- gdb: thread apply all bt --------------------------------------------------------

# Thread 2 (Thread 0x7fb51d3186c0 (LWP 11) "blocked"):   glibc threads (libthread_db)
# Thread 4 (LWP 23 "goblocked"):                         no libthread_db (Go, static)
# Thread 1 (process 7 "name"):                           single-threaded, no libthread_db
_GDB_THREAD = re.compile(
    r"^Thread \d+ \((?:Thread 0x[0-9a-f]+ \(LWP (?P<lwp>\d+)\)|LWP (?P<lwp2>\d+)"
    r'|process (?P<proc>\d+))(?: "(?P<name>.*)")?\):\s*$'
)
# #1  0x0000555d10d5e162 in blocked_here () at blocked.c:3
# #0  runtime.futex () at /usr/local/go/src/runtime/sys_linux_amd64.s:570   (no pc: frame 0/inlined)
# #2  0x00007f4ad83c5c67 in cfunction_vectorcall_O (...) from /lib/libpython3.12.so.1.0
# #9  0x0000000000000000 in ?? ()
_GDB_FRAME = re.compile(
    r"^#\d+\s+(?:(?P<addr>0x[0-9a-f]+) in )?(?P<func>.+?) \((?:\.\.\.)?\)"
    r"(?: at (?P<file>.+):(?P<line>\d+)| from (?P<lib>.+))?\s*$"
)


def gdb(out: str) -> list[ThreadStack]:
    """``gdb -batch -ex 'set print frame-arguments presence' -ex 'thread apply all bt'``."""
    threads: list[ThreadStack] = []
    current: ThreadStack | None = None
    for line in out.splitlines():
        m = _GDB_THREAD.match(line)
        if m:
            tid = m.group("lwp") or m.group("lwp2") or m.group("proc")
            current = ThreadStack(tid=int(tid), name=m.group("name"), frames=[])
            threads.append(current)
            continue
        if current is None:
            continue  # gdb's preamble: "[New LWP 11]", the stop location, ...
        f = _GDB_FRAME.match(line)
        if f:
            current.frames.append(
                Frame(
                    function=f.group("func"),
                    file=f.group("file"),
                    line=int(f.group("line")) if f.group("line") else None,
                    module=f.group("lib"),
                    address=f.group("addr"),
                )
            )
    # gdb numbers threads newest first; the main thread first reads better.
    threads.sort(key=lambda t: t.tid if t.tid is not None else 0)
    return threads


_SYSROOT = re.compile(r"^/proc/\d+/root(?=/)")
_WALK_THREAD = re.compile(r"^TRACECAR-THREAD (?P<tid>\d+) ?(?P<name>.*)$")
_WALK_FRAME = re.compile(r"^TRACECAR-FRAME (?P<addr>0x[0-9a-f]+) (?P<sym>.*)$")
# gdb's `info symbol`: "CallDescrWorkerInternal + 124 in section .text of /x/libcoreclr.so"
_INFO_SYMBOL = re.compile(r"^(?P<func>.+?)(?: \+ \d+)? in section \S+(?: of (?P<lib>.+))?$")


def gdb_walk(out: str) -> list[ThreadStack]:
    """The .NET walk's lines (agent.stacks._plan.DOTNET_WALK): frames with no symbol
    are ``??`` (JIT code: the service names them from the perf map)."""
    threads: list[ThreadStack] = []
    current: ThreadStack | None = None
    for line in out.splitlines():
        m = _WALK_THREAD.match(line)
        if m:
            current = ThreadStack(tid=int(m.group("tid")), name=m.group("name") or None, frames=[])
            threads.append(current)
            continue
        f = _WALK_FRAME.match(line)
        if f and current is not None:
            s = _INFO_SYMBOL.match(f.group("sym"))
            lib = s.group("lib") if s else None
            if lib:
                lib = _SYSROOT.sub("", lib)  # as the process sees it
            current.frames.append(
                Frame(
                    function=s.group("func") if s else "??",
                    module=lib or None,
                    address=f.group("addr"),
                )
            )
    return threads


def walk_text(threads: list[ThreadStack]) -> str:
    """The walk as gdb's backtraces read: one block per thread, one line per frame."""
    out = []
    for t in threads:
        out.append(f'Thread (LWP {t.tid}) "{t.name or ""}":')
        for i, f in enumerate(t.frames):
            where = f" from {f.module}" if f.module else ""
            out.append(f"#{i:<3}{f.address} in {f.function} (){where}")
        out.append("")
    return "\n".join(out)


def gdb_text(out: str) -> str:
    """gdb's backtraces without its preamble and its closing "[Inferior 1 ... detached]"."""
    lines = out.splitlines()
    start = next((i for i, ln in enumerate(lines) if _GDB_THREAD.match(ln)), None)
    if start is None:
        raise Unparsable("gdb printed no thread")
    kept = [ln for ln in lines[start:] if not ln.startswith("[Inferior ")]
    return "\n".join(kept).rstrip() + "\n"


# --- jattach PID threaddump ----------------------------------------------------------

# "sleeper-thread" #12 prio=5 os_prio=0 cpu=0.10ms elapsed=3.43s tid=0x00007f8e30118bd0 nid=0x2e ...
# "VM Thread" os_prio=0 cpu=0.45ms elapsed=3.46s tid=0x00007f8e300f4400 nid=0x22 runnable
_JAVA_THREAD = re.compile(r'^"(?P<name>.*)" (?P<rest>.*\bnid=(?P<nid>0x[0-9a-f]+|\d+)\b.*)$')
_JAVA_STATE = re.compile(r"^\s+java\.lang\.Thread\.State: (?P<state>.+?)\s*$")
# 	at Sleeper.waitHere(Sleeper.java:2)
# 	at java.lang.Thread.sleep(java.base@17.0.15/Native Method)
# 	at Sleeper$$Lambda$1/0x00007f8db4000a08.run(Unknown Source)
_JAVA_FRAME = re.compile(r"^\s+at (?P<method>\S+?)\((?P<where>[^()]*)\)\s*$")
_JATTACH_HEADER = ("Connected to remote JVM", "JVM response code = ")


def jattach_text(out: str) -> str:
    """The JVM's thread dump without jattach's own two header lines."""
    lines = out.splitlines()
    while lines and lines[0].startswith(_JATTACH_HEADER):
        lines.pop(0)
    text = "\n".join(lines).strip("\n") + "\n"
    if "Full thread dump" not in text:
        raise Unparsable("the JVM's answer is not a thread dump")
    return text


def jattach(out: str) -> list[ThreadStack]:
    """The JVM's thread dump (``jstack``'s format): every thread, Java methods innermost first.

    ``nid`` is the thread's native id (hex up to JDK 18, decimal from 19), the one
    /proc/PID/task and gdb show. The JVM's own threads (GC, compiler) have no frames.
    """
    threads: list[ThreadStack] = []
    current: ThreadStack | None = None
    for line in jattach_text(out).splitlines():
        m = _JAVA_THREAD.match(line)
        if m:
            nid = m.group("nid")
            current = ThreadStack(
                tid=int(nid, 16) if nid.startswith("0x") else int(nid),
                name=m.group("name"),
                frames=[],
            )
            threads.append(current)
            continue
        if current is None:
            continue
        s = _JAVA_STATE.match(line)
        if s:
            current.state = s.group("state")
            continue
        f = _JAVA_FRAME.match(line)
        if f:
            current.frames.append(_java_frame(f.group("method"), f.group("where")))
    return threads


def _java_frame(method: str, where: str) -> Frame:
    module = None
    if "/" in where:  # "java.base@17.0.15/Thread.java:1313"
        module, _, where = where.rpartition("/")
    file: str | None = where
    line = None
    name, sep, num = where.rpartition(":")
    if sep and num.isdigit():
        file, line = name, int(num)
    if file in ("Native Method", "Unknown Source"):
        file = None
    return Frame(function=method, file=file, line=line, module=module or None)
