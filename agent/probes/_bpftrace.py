"""The bpftrace backend: a pure program generator, an incremental output parser, a runner.

The program prints one JSON record per ``printf`` (``bpftrace -f json``), so
bpftrace itself escapes whatever a traced string holds. Records are tagged:

* ``E\\tpid\\ttid\\tnsecs\\t<numeric args>[\\tretval\\tlatency]``: one hit;
* ``S\\ttid\\tindex\\t<string>``: a string argument of the next ``E`` of that
  thread; the string is everything after the third tab, so tabs, quotes or
  newlines inside it cannot shift fields;
* ``K\\ttid\\t<ustack>``: the user stack of the next ``E`` of that thread;
* ``R``: printed by BEGIN, which bpftrace runs once every probe is attached;
* ``X``: END reached; map records after it are bpftrace's own exit dump.

Maps ``@__hits`` (count) and ``@__hist`` (hist) are printed every second and at
the end, which gives exact hit counts even when the perf buffer loses events.
A USDT spec attaches ``usdt:/proc/PID/root/PATH:provider:name`` (``-p PID`` also sets
the probe's semaphore, through the kernel's uprobe reference counter); a Python
function is CPython's ``python:function__entry``/``function__return`` pair filtered
by name and file in BPF, its latency paired per thread and nesting depth; Python
events print ``E\\tpid\\ttid\\tnsecs\\tline\\treturn_line\\tlatency`` with the file
and function name on S records 0 and 1.

bpftrace's ``pid``/``tid`` are the node's ids; the process is selected with
``-p PID`` (resolved in the agent's PID namespace, the pod's), and events carry
the pod's pid.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from agent import _proc
from agent.probes._model import ArgType, Bucket
from agent.probes._plan import (
    Attached,
    Buckets,
    Counts,
    Finished,
    Hit,
    Item,
    Lost,
    Spec,
)

# printf conversion and expression per argument type; strings travel on S records.
_FMT: dict[str, str] = {
    "int": "%lld",
    "int32": "%d",
    "uint": "%llu",
    "uint32": "%u",
    "ptr": "%llx",
}


def _expr(t: ArgType, raw: str) -> str:
    return {
        "int": f"(int64){raw}",
        "int32": f"(int32){raw}",
        "uint": f"(uint64){raw}",
        "uint32": f"(uint32){raw}",
        "ptr": f"(uint64){raw}",
        "str": f"str({raw})",
    }[t]


def _decode(t: ArgType, text: str | bytes) -> int | str:
    if t == "ptr":
        return f"0x{int(text, 16):x}"
    return int(text)


def probe_point(spec: Spec, kind: str) -> str:
    """``uprobe:/proc/PID/root/PATH:func`` (path and function validated by the model);
    for a USDT spec, ``usdt:/proc/PID/root/PATH:provider:name`` of its point (``uprobe``)
    or of the probe that closes it (``uretprobe``)."""
    if spec.usdt is not None:
        name = spec.usdt_return if kind == "uretprobe" else spec.usdt
        return f"usdt:{spec.host_binary}:{name}"
    # bpftrace 0.17 here cannot place a probe inside a function (symbol+offset): the
    # service routes those to perf probe, so only symbols and entry addresses get here.
    target = spec.function
    if spec.pclntab_entry is not None:
        target = f"{spec.pclntab_entry:#x}"  # a stripped Go function: its file offset
    return f"{kind}:{spec.host_binary}:{target}"


def _python_filter(spec: Spec) -> str:
    """``str(arg1) == "name" && strcontains(str(arg0), "file")`` (both validated by the model:
    identifiers and path characters, nothing a bpftrace string literal would interpret)."""
    conds = []
    if spec.python_function is not None:
        conds.append(f'str(arg1) == "{spec.python_function}"')
    if spec.python_file is not None:
        conds.append(f'strcontains(str(arg0), "{spec.python_file}")')
    return " && ".join(conds)


def _usdt_parts(spec: Spec, hit: str, cap: str) -> tuple[list[str], list[str], list[str], str]:
    """Entry and return statements, maps and the filter of a USDT spec.

    Latency pairs the point with its closing probe per thread *and nesting depth*
    (``@__d[tid]``): a recursive function's inner calls close before the outer one,
    and a return seen at depth 0 belongs to a call that began before the probe was
    attached, so it is skipped.
    """
    entry: list[str] = []
    ret: list[str] = []
    maps: list[str] = ["@__hits"]
    push = ["@__d[tid] = @__d[tid] + 1;", "@__t[tid, @__d[tid]] = nsecs;"]
    pop = ["$d = @__d[tid];", "$lat = nsecs - @__t[tid, $d];", "delete(@__t[tid, $d]);"]
    pop.append("@__d[tid] = $d - 1;")
    if spec.python_function is not None:
        if spec.mode == "count":
            # A call is counted when it returns: function__return fires on every build
            # seen, and needs no line tracing (see Spec.usdt_enable).
            ret += [hit, cap]
        elif spec.mode == "histogram":
            maps += ["@__hist", "@__d", "@__t"]
            entry += push
            ret += [*pop, hit, "@__hist = hist($lat);", cap]
        else:
            maps += ["@__d", "@__t", "@__l"]
            entry += [*push, "@__l[tid, @__d[tid]] = (int32)arg2;"]
            ret += [*pop, hit]
            ret.append('printf("S\\t%d\\t0\\t%s\\n", tid, str(arg0));')
            ret.append('printf("S\\t%d\\t1\\t%s\\n", tid, str(arg1));')
            ret.append(
                'printf("E\\t%d\\t%d\\t%llu\\t%d\\t%d\\t%llu\\n", '
                "pid, tid, nsecs, @__l[tid, $d], (int32)arg2, $lat);"
            )
            ret.append("delete(@__l[tid, $d]);")
        return entry, ret, maps, _python_filter(spec)
    # A generic USDT point: latency needs its closing probe (the service checks there is one).
    maps += ["@__hist", "@__d", "@__t"]
    entry += push
    ret += [*pop, hit, "@__hist = hist($lat);", cap]
    return entry, ret, maps, ""


def program(spec: Spec) -> str:
    """The bpftrace program for ``spec`` (pure; shown by ``POST /probes?dry_run=true``)."""
    entry: list[str] = []
    ret: list[str] = []
    maps: list[str] = ["@__hits"]
    pred = ""
    hit = "@__hits = count();"
    cap = ""
    if spec.mode != "events" and spec.max_events:
        cap = f"@__n = @__n + 1; if (@__n >= {spec.max_events}) {{ exit(); }}"
        maps.append("@__n")
    stack = 'printf("K\\t%d\\t%s\\n", tid, ustack);' if spec.stack else ""

    if spec.python_function is not None:
        entry, ret, umaps, pred = _usdt_parts(spec, hit, cap)
        maps += [m for m in umaps if m not in maps]
    elif spec.mode == "events":
        nums = [(i, t) for i, t in enumerate(spec.args) if t != "str"]
        strs = [i for i, t in enumerate(spec.args) if t == "str"]
        fmt = "E\\t%d\\t%d\\t%llu" + "".join("\\t" + _FMT[t] for _, t in nums)
        if not spec.retval:
            values = ["pid", "tid", "nsecs"] + [_expr(t, f"arg{i}") for i, t in nums]
            entry += [hit, stack]
            entry += [f'printf("S\\t%d\\t{i}\\t%s\\n", tid, str(arg{i}));' for i in strs]
            entry.append(f'printf("{fmt}\\n", {", ".join(values)});')
        else:
            maps.append("@__t")
            entry += ["@__t[tid] = nsecs;", stack]
            for i, t in enumerate(spec.args):
                entry.append(f"@__a{i}[tid] = {_expr(t, f'arg{i}')};")
                maps.append(f"@__a{i}")
            rt = spec.retval_type
            ret_expr = _expr(rt, "retval")
            ret += [hit]
            ret += [f'printf("S\\t%d\\t{i}\\t%s\\n", tid, @__a{i}[tid]);' for i in strs]
            if rt == "str":
                ret.append(f'printf("S\\t%d\\tret\\t%s\\n", tid, {ret_expr});')
                fmt += "\\t%d"
                values_ret = ["0"]
            else:
                fmt += "\\t" + _FMT[rt]
                values_ret = [ret_expr]
            values = ["pid", "tid", "nsecs"] + [f"@__a{i}[tid]" for i, _ in nums] + values_ret
            values.append("nsecs - @__t[tid]")
            ret.append(f'printf("{fmt}\\t%llu\\n", {", ".join(values)});')
            ret += [f"delete({m}[tid]);" for m in maps if m not in ("@__hits",)]
    elif spec.mode == "count":
        entry += [hit, cap]
    elif spec.is_usdt and (spec.python_function is not None or spec.of == "latency"):
        entry, ret, umaps, pred = _usdt_parts(spec, hit, cap)
        maps += [m for m in umaps if m not in maps]
    else:
        maps.append("@__hist")
        if spec.of == "latency":
            maps.append("@__t")
            entry.append("@__t[tid] = nsecs;")
            ret += [hit, "@__hist = hist(nsecs - @__t[tid]);", "delete(@__t[tid]);", cap]
        elif spec.of == "retval":
            ret += [hit, f"@__hist = hist({_expr(spec.retval_type, 'retval')});", cap]
        else:
            n = int(spec.of[3:])
            at: ArgType = spec.args[n] if n < len(spec.args) else "int"
            entry += [hit, f"@__hist = hist({_expr(at, f'arg{n}')});", cap]

    what = spec.function
    if spec.python_function is not None:
        what = f"Python function {spec.python_function}"
        if spec.python_file is not None:
            what += f" (file containing {spec.python_file})"
    lines = [f"// tracecar probe: {spec.mode} of {what} in {spec.binary} (pid {spec.pid})"]
    # BEGIN fires once every probe is attached: the agent's signal that hits will be seen.
    lines.append('BEGIN { printf("R\\n"); }')
    if entry:
        # Probes that only switch the program onto the path that fires the point.
        lines += [f"usdt:{spec.host_binary}:{name} {{ }}" for name in spec.usdt_enable]
        guard = f" /{pred}/" if pred else ""
        lines.append(probe_point(spec, "uprobe") + guard + " {")
        lines += [f"  {s}" for s in entry if s]
        lines.append("}")
    if ret:
        if spec.is_usdt and "@__d" in maps:
            guard = f" /{pred + ' && ' if pred else ''}@__d[tid] > 0/"
        elif spec.is_usdt:
            guard = f" /{pred}/" if pred else ""
        else:
            guard = " /@__t[tid]/" if "@__t" in maps else ""
        lines.append(probe_point(spec, "uretprobe") + guard + " {")
        lines += [f"  {s}" for s in ret if s]
        lines.append("}")
    printed = [m for m in ("@__hits", "@__hist") if m in maps]
    prints = " ".join(f"print({m});" for m in printed)
    lines.append(f"interval:ms:1000 {{ {prints} }}")
    lines.append(f"interval:ms:{max(1, round(spec.duration_s * 1000))} {{ exit(); }}")
    clears = " ".join(f"clear({m});" for m in maps)
    lines.append(f'END {{ {prints} printf("X\\n"); {clears} }}')
    return "\n".join(lines) + "\n"


def argv(program_text: str, pid: int, *, spec: Spec | None = None) -> list[str]:
    """``-p PID``: the kernel filters the uprobe to that process (pid as the pod sees it).
    ``--unsafe`` only for a generated program on a stripped Go function's pclntab entry
    (:attr:`Spec.pclntab_entry`); never for a raw program."""
    unsafe = ["--unsafe"] if spec is not None and spec.pclntab_entry is not None else []
    return ["bpftrace", "-f", "json", *unsafe, "-p", str(pid), "-e", program_text]


ENV = {
    # A bigger perf ring buffer per CPU than the default 64 pages: fewer lost events.
    "BPFTRACE_PERF_RB_PAGES": "256",
}
PYTHON_STRLEN = 200
"""Bytes ``str()`` reads for Python's file and function names (bpftrace's default is 64,
too short for many paths; 200 is what bpftrace 0.17 fits on the BPF stack here)."""


def env(spec: Spec | None) -> dict[str, str]:
    """The variables bpftrace runs with (shown by a dry run). Stacks: addresses only,
    the agent names them as the profiles do (bpftrace's own names would differ where it
    can see the process: no pclntab, no debug files, no inlined frames)."""
    if spec is not None and spec.python_function is not None:
        return {**ENV, "BPFTRACE_STRLEN": str(PYTHON_STRLEN)}
    if spec is not None and spec.stack:
        return {**ENV, "BPFTRACE_NO_USER_SYMBOLS": "1"}
    return dict(ENV)


_E_PREFIX = b'{"type": "printf", "data": "E\\t'
_E_SUFFIX = b'\\n"}'


class Parser:
    """Turns bpftrace's JSON lines into records, joining S/K lines to their E line."""

    def __init__(self, spec: Spec | None) -> None:
        self.spec = spec
        self.host_pid: int | None = None
        self._strings: dict[int, dict[str, str]] = {}
        self._stacks: dict[int, list[str]] = {}
        self._ended = False
        # bpftrace's nsecs is CLOCK_MONOTONIC; events carry wall-clock nanoseconds.
        self._mono_to_wall = time.time_ns() - time.monotonic_ns()

    def feed(self, line: bytes) -> Item | None:
        if line.startswith(_E_PREFIX) and line.endswith(_E_SUFFIX) and self.spec is not None:
            # The hot path: a hit record is tab-separated numbers (no escapes but \t), so
            # it is split as bytes without decoding the JSON around it.
            return self._event(line[len(_E_PREFIX) - 3 : -len(_E_SUFFIX)].split(b"\\t"))
        try:
            rec = json.loads(line)
        except ValueError:
            return None
        if not isinstance(rec, dict):
            return None
        kind = rec.get("type")
        data = rec.get("data")
        if kind == "printf" and isinstance(data, str):
            return self._printf(data)
        if kind == "attached_probes" and isinstance(data, dict) and self.spec is None:
            # A raw program has no BEGIN of ours; bpftrace prints this just before attaching.
            return Attached(int(data.get("probes", 0)))
        if kind == "lost_events" and isinstance(data, dict):
            return Lost(int(data.get("events", 0)))
        if self._ended or not isinstance(data, dict):
            return None
        if kind == "map" and isinstance(data.get("@__hits"), int):
            return Counts(int(data["@__hits"]))
        if kind == "hist" and isinstance(data.get("@__hist"), list):
            return Buckets([_bucket(b) for b in data["@__hist"] if isinstance(b, dict)])
        return None

    def _printf(self, data: str) -> Item | None:
        if data.endswith("\n"):
            data = data[:-1]
        tag = data[:1]
        if tag == "E" and self.spec is not None:
            return self._event(data.split("\t"))
        if tag == "S":
            parts = data.split("\t", 3)
            if len(parts) == 4:
                self._strings.setdefault(int(parts[1]), {})[parts[2]] = parts[3]
            return None
        if tag == "K":
            parts = data.split("\t", 2)
            if len(parts) == 3:
                frames = [ln.strip() for ln in parts[2].splitlines() if ln.strip()]
                self._stacks[int(parts[1])] = frames
            return None
        if tag == "R" and self.spec is not None:
            return Attached()
        if tag == "X":
            self._ended = True
            return Finished()
        # A raw program's own output.
        return Hit({"output": data}) if self.spec is None else None

    def _event(self, fields: Sequence[str | bytes]) -> Hit | None:
        spec = self.spec
        assert spec is not None
        try:
            host_pid, tid, ns = int(fields[1]), int(fields[2]), int(fields[3])
            self.host_pid = host_pid
            strings = self._strings.pop(tid, {})
            ev: dict[str, Any] = {
                "time_ns": ns + self._mono_to_wall,
                "pid": spec.pid,
                # bpftrace reports the node's thread ids; the main thread is the process.
                "tid": spec.pid if tid == host_pid else tid,
            }
            rest: Iterator[str | bytes] = iter(fields[4:])
            if spec.python_function is not None:
                ev["function"] = strings.get("1", "")
                ev["file"] = strings.get("0", "")
                ev["line"] = int(next(rest))
                ev["return_line"] = int(next(rest))
                ev["latency_ns"] = int(next(rest))
                return Hit(ev, host_tid=tid)
            for i, t in enumerate(spec.args):
                ev[f"arg{i}"] = strings.get(str(i), "") if t == "str" else _decode(t, next(rest))
            if spec.retval:
                raw = next(rest)
                rt = spec.retval_type
                ev["retval"] = strings.get("ret", "") if rt == "str" else _decode(rt, raw)
                ev["latency_ns"] = int(next(rest))
            if spec.stack:
                ev["stack"] = self._stacks.pop(tid, [])
        except (IndexError, StopIteration, ValueError):
            return None
        return Hit(ev, host_tid=tid)


def _bucket(b: dict[str, Any]) -> Bucket:
    lo = b.get("min")
    hi = b.get("max")
    return {
        "min": int(lo) if isinstance(lo, int) else None,
        "max": int(hi) if isinstance(hi, int) else None,
        "count": int(b.get("count", 0)),
    }


class Session:
    """One running bpftrace: started, read line by line, stopped (SIGINT flushes END)."""

    def __init__(self, program_text: str, pid: int, spec: Spec | None) -> None:
        self.argv = argv(program_text, pid, spec=spec)
        self.env = env(spec)
        self.parser = Parser(spec)
        self.child: _proc.Child | None = None
        self.stderr_tail = ""
        self._stderr_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.child = await _proc.Child.start(self.argv, env={**os.environ, **self.env})
        self._stderr_task = asyncio.create_task(self._drain_stderr())

    async def _drain_stderr(self) -> None:
        assert self.child is not None and self.child.proc.stderr is not None
        while True:
            chunk = await self.child.proc.stderr.read(4096)
            if not chunk:
                return
            text = chunk.decode("utf-8", "replace")
            # The RLIMIT_MEMLOCK warning is harmless noise on these kernels.
            kept = "\n".join(ln for ln in text.splitlines() if "RLIMIT_MEMLOCK" not in ln)
            self.stderr_tail = (
                (self.stderr_tail + "\n" + kept)[-4000:] if kept else self.stderr_tail
            )

    async def items(self) -> AsyncIterator[Item]:
        assert self.child is not None and self.child.proc.stdout is not None
        async for lines in _proc.line_batches(self.child.proc.stdout):
            for line in lines:
                if line:
                    item = self.parser.feed(line)
                    if item is not None:
                        yield item
        if self._stderr_task is not None:
            await asyncio.wait_for(self._stderr_task, 5)

    def interrupt(self) -> None:
        """SIGINT: bpftrace runs END (final maps), exits, and :meth:`items` ends."""
        if self.child is not None:
            self.child.send_signal(signal.SIGINT)

    async def stop(self, *, grace: float = 5.0) -> int:
        if self.child is None:
            return 0
        rc = await self.child.stop(grace=grace)
        task = self._stderr_task
        if task is not None and not task.done():
            # bpftrace's group is dead, so its stderr is at EOF and the drain ends now;
            # it is waited for here because items() is not always read to its end.
            _, pending = await asyncio.wait({task}, timeout=1)
            for t in pending:
                t.cancel()
        return rc

    def message(self) -> str:
        rc = self.child.returncode if self.child is not None else None
        return _proc.tool_message(self.stderr_tail, rc if rc is not None else -1)


async def version() -> str | None:
    try:
        done = await _proc.run(["bpftrace", "--version"], timeout=10)
    except _proc.ProcError:
        return None
    return done.text.strip().removeprefix("bpftrace").strip() or None


async def usable() -> tuple[bool, str]:
    """Can bpftrace load a program here (BPF permitted, kernel support)?"""
    try:
        await _proc.run(["bpftrace", "-e", "BEGIN { exit(); }"], timeout=20)
    except _proc.ToolNotFound:
        return False, "bpftrace is not installed"
    except _proc.ToolFailed as e:
        return False, f"bpftrace cannot load programs here: {_proc.tool_message(e.stderr, 1)}"
    except _proc.ProcError as e:
        return False, f"bpftrace did not start: {e}"
    return True, "bpftrace loads BPF programs here; its probes vanish when it exits"
