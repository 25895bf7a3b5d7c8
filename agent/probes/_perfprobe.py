"""The perf-probe backend: uprobe events in tracefs, recorded with ``perf record | perf script``.

``perf probe`` definitions are node-global and outlive the process that made
them, so every event this agent defines lives in one group named after this
agent instance (``tracecar_<instance>``): two agents on one node never touch
each other's events, and :func:`sweep` deletes a crashed run's leftovers at
start-up and everything at shutdown.

``perf probe --target-ns=PID -x PATH`` resolves PATH in the target's mount
namespace (``-x /proc/PID/root/...`` does not work). Arguments are read from
the x86-64 argument registers; the return value with ``$retval``.

Planning (:func:`plan`) is pure; :class:`Session` runs the plan and parses
``perf script`` lines incrementally.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import signal
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import _proc
from agent.probes._model import ArgType
from agent.probes._plan import Buckets, Counts, Hit, Item, Pow2Histogram, Spec

TRACEFS = Path("/sys/kernel/tracing")
REGISTERS = ("%di", "%si", "%dx", "%cx", "%r8", "%r9")
_TYPES: dict[str, str] = {
    "int": "s64",
    "int32": "s32",
    "uint": "u64",
    "uint32": "u32",
    "ptr": "x64",
}
_LINE = re.compile(
    r"^\s*(\d+)/(\d+)\s+(\d+)\.(\d+):\s+(\S+?):\s+\(([0-9a-f]+)(?: <- [0-9a-f]+)?\)\s?(.*)$"
)
TIMEOUT_S = 30.0
START_RACE_RETRIES = 10
"""perf record's start race (:data:`agent._proc.PERF_START_RACE`) costs a start about
0.1 s; an app that churns threads loses most starts to it. As the profiles' record."""


def group_name(instance: str) -> str:
    """``tracecar_<instance>`` with only ``[a-z0-9_]`` (tracefs's rule), short enough."""
    clean = re.sub(r"[^a-z0-9_]", "_", instance.lower()).strip("_")
    if not clean or len(clean) > 24:
        clean = hashlib.sha1(instance.encode()).hexdigest()[:12]  # noqa: S324 - a name, not security
    return f"tracecar_{clean}"


@dataclass(frozen=True, slots=True)
class Plan:
    group: str
    entry_event: str | None
    return_event: str | None
    add: list[list[str]]
    record: list[str]
    script: list[str]
    delete: list[str]
    control_dir: str


def _fetch(t: ArgType, place: str) -> str:
    if t == "str":
        return f"+0({place}):string"
    return f"{place}:{_TYPES[t]}"


def plan(spec: Spec, *, group: str, probe_id: str, control_dir: str) -> Plan:
    """The perf command lines for ``spec`` (pure; shown by a dry run).

    perf record starts with its events disabled (``-D -1``) and enables them when
    told through its control FIFO in ``control_dir``; its "ack" is the moment
    from which every hit is seen (opening the events alone is not: perf enables
    them only after synthesizing the target's threads and maps).
    """
    base = ["perf", "probe", "-q", f"--target-ns={spec.pid}", "-x", spec.binary]
    add: list[list[str]] = []
    entry_event = return_event = None
    if spec.needs_entry:
        entry_event = f"p{probe_id}e"
        fetch = " ".join(f"a{i}={_fetch(t, REGISTERS[i])}" for i, t in enumerate(spec.args))
        add.append([*base, "-a", f"{group}:{entry_event}={spec.function} {fetch}".strip()])
    if spec.needs_return:
        return_event = f"p{probe_id}r__return"  # perf appends __return to return probes
        fetch = f"ret={_fetch(spec.retval_type, '$retval')}"
        add.append([*base, "-a", f"{group}:p{probe_id}r={spec.function}%return {fetch}"])
    events = [f"{group}:{e}" for e in (entry_event, return_event) if e]
    ctl, ack = os.path.join(control_dir, "ctl"), os.path.join(control_dir, "ack")
    record = ["perf", "record", "-q", "-B", "-k", "monotonic", "-p", str(spec.pid), "-o", "-"]
    record += ["-D", "-1", "--control", f"fifo:{ctl},{ack}"]
    # Live delivery: perf record wakes per event, perf script's stdout is line-buffered
    # (it is a pipe to the agent, which stdio would otherwise fill 4 KiB at a time).
    record.append("--no-buffering")
    for e in events:
        record += ["-e", e]
    script = [
        "stdbuf",
        "-oL",
        "perf",
        "script",
        "-i",
        "-",
        "--ns",
        "-F",
        "pid,tid,time,event,trace",
    ]
    delete = ["perf", "probe", "-q", "-d", f"{group}:p{probe_id}*"]
    return Plan(group, entry_event, return_event, add, record, script, delete, control_dir)


def _value(t: ArgType, text: str) -> int | str | None:
    if t == "str":
        if text == "(fault)":
            return None
        return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text
    if t == "ptr":
        return f"0x{int(text, 16):x}"
    return int(text, 0)


class Parser:
    """``perf script`` lines -> hits; pairs entry and return per thread for latency."""

    def __init__(self, spec: Spec, p: Plan) -> None:
        self.spec = spec
        self.plan = p
        self.hits = 0
        self.hist = Pow2Histogram()
        self._open: dict[int, list[tuple[int, dict[str, Any]]]] = {}
        self._mono_to_wall = time.time_ns() - time.monotonic_ns()
        names = [f"a{i}" for i in range(len(spec.args))]
        self._entry_re = re.compile("^" + " ".join(f"{n}=(.*?)" for n in names) + "$")
        self._ret_re = re.compile(r"^ret=(.*?)$")

    def feed(self, line: str) -> Item | None:
        m = _LINE.match(line)
        if m is None:
            return None
        pid, tid = int(m.group(1)), int(m.group(2))
        ns = int(m.group(3)) * 1_000_000_000 + int(m.group(4).ljust(9, "0")[:9])
        event = m.group(5).split(":", 1)[-1]
        payload = m.group(7).strip()
        spec = self.spec
        if event == self.plan.entry_event:
            values: dict[str, Any] = {}
            if spec.args:
                vm = self._entry_re.match(payload)
                if vm is None:
                    return None
                for i, (t, text) in enumerate(zip(spec.args, vm.groups(), strict=True)):
                    values[f"arg{i}"] = _value(t, text)
            if spec.needs_return:
                self._open.setdefault(tid, []).append((ns, values))
                return None
            self.hits += 1
            if spec.mode == "count":
                return Counts(self.hits)
            if spec.mode == "histogram":
                n = int(spec.of[3:])
                v = values.get(f"arg{n}")
                self.hist.add(v if isinstance(v, int) else 0)
                return Counts(self.hits)
            return Hit({"time_ns": ns + self._mono_to_wall, "pid": pid, "tid": tid, **values})
        if event == self.plan.return_event:
            rm = self._ret_re.match(payload)
            ret = _value(spec.retval_type, rm.group(1)) if rm else None
            stack = self._open.get(tid)
            opened = stack.pop() if stack else None
            if spec.mode == "histogram" and spec.of == "retval":
                self.hits += 1
                self.hist.add(ret if isinstance(ret, int) else 0)
                return Counts(self.hits)
            if opened is None:
                return None  # attached mid-call: no entry to pair with
            start, values = opened
            self.hits += 1
            if spec.mode == "histogram":
                self.hist.add(ns - start)
                return Counts(self.hits)
            ev = {"time_ns": ns + self._mono_to_wall, "pid": pid, "tid": tid, **values}
            ev["retval"] = ret
            ev["latency_ns"] = ns - start
            return Hit(ev)
        return None


async def ensure_tracefs() -> tuple[bool, str]:
    """perf probe needs tracefs; mount it if it is not (as the platform requires)."""
    if (TRACEFS / "uprobe_events").exists():
        return True, f"tracefs mounted at {TRACEFS}"
    try:
        await _proc.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], timeout=10)
    except _proc.ProcError as e:
        return False, f"tracefs is not mounted at {TRACEFS} and mounting it failed: {e}"
    if (TRACEFS / "uprobe_events").exists():
        return True, f"tracefs mounted at {TRACEFS} by the agent"
    return False, f"tracefs at {TRACEFS} has no uprobe_events (kernel without UPROBE_EVENTS?)"


def our_events(group: str) -> list[str]:
    """Lines of tracefs's uprobe_events that belong to ``group``."""
    try:
        text = (TRACEFS / "uprobe_events").read_text()
    except OSError:
        return []
    return [ln for ln in text.splitlines() if f":{group}/" in ln]


async def sweep(group: str, pattern: str = "*") -> None:
    """Delete our group's events (a crashed run's, or all at shutdown)."""
    if not our_events(group):
        return
    with contextlib.suppress(_proc.ProcError):
        await _proc.run(["perf", "probe", "-q", "-d", f"{group}:{pattern}"], timeout=TIMEOUT_S)


_PIPE_HEADER = 16  # perf_pipe_file_header: magic "PERFILE2" and its size
_TRACING_DATA = 66  # PERF_RECORD_HEADER_TRACING_DATA: its data follows, sized apart
_ROUND = struct.pack("<IHH", 68, 0, 8)  # PERF_RECORD_FINISHED_ROUND, a bare header


class PipeFramer:
    """Splits perf's pipe format into whole records, and appends two round markers
    after each batch so perf script prints everything it has seen so far."""

    def __init__(self) -> None:
        self._buf = b""
        self._started = False

    def feed(self, chunk: bytes) -> bytes:
        buf = self._buf + chunk
        out = b""
        if not self._started:
            if len(buf) < _PIPE_HEADER:
                self._buf = buf
                return b""
            out, buf = buf[:_PIPE_HEADER], buf[_PIPE_HEADER:]
            self._started = True
        pos = 0
        while len(buf) - pos >= 8:
            rtype, _misc, size = struct.unpack_from("<IHH", buf, pos)
            if size < 8:
                # Not a format we understand: pass the rest through untouched.
                self._buf = b""
                return out + buf
            if rtype == _TRACING_DATA:
                if len(buf) - pos < 12:
                    break
                (extra,) = struct.unpack_from("<I", buf, pos + 8)
                size += extra
            if len(buf) - pos < size:
                break
            pos += size
        self._buf = buf[pos:]
        if pos:
            out += buf[:pos] + _ROUND + _ROUND
        return out


class Session:
    """``perf probe -a`` the events, then ``perf record -o - | perf script -i -``."""

    def __init__(self, spec: Spec, p: Plan) -> None:
        self.spec = spec
        self.plan = p
        self.parser = Parser(spec, p)
        self.record: _proc.Child | None = None
        self.script: _proc.Child | None = None
        self.stderr_tail = ""
        self.restarts = 0
        """Times perf record stopped at its start on its own race and was started again."""
        self._tasks: list[asyncio.Task[None]] = []
        self._fifos: list[int] = []

    async def start(self) -> None:
        """Add the events, then start ``perf record | perf script`` and enable the
        events. perf record's start race is met by starting the pair again: its events
        were still disabled (``-D -1``), so no hit was missed."""
        try:
            for cmd in self.plan.add:
                await _proc.run(cmd, timeout=TIMEOUT_S)
            while True:
                try:
                    await self._launch()
                    return
                except _proc.ToolFailed as e:
                    raced = _proc.perf_lost_a_thread_at_start(e.returncode, e.stderr)
                    if not raced or self.restarts >= START_RACE_RETRIES:
                        raise
                self.restarts += 1
                await self._end_pipeline(grace=1)
        except BaseException:
            await self.stop(grace=1)
            raise

    async def _launch(self) -> None:
        os.makedirs(self.plan.control_dir, mode=0o700, exist_ok=False)
        for name in ("ctl", "ack"):
            path = os.path.join(self.plan.control_dir, name)
            os.mkfifo(path, 0o600)
            # Read-write and non-blocking: opening never waits for perf's end.
            self._fifos.append(os.open(path, os.O_RDWR | os.O_NONBLOCK))
        self.stderr_tail = ""
        self.record = await _proc.Child.start(self.plan.record)
        self.script = await _proc.Child.start(self.plan.script, stdin=asyncio.subprocess.PIPE)
        assert self.record.proc.stderr is not None and self.script.proc.stderr is not None
        self._tasks = [
            asyncio.create_task(self._drain(self.record.proc.stderr)),
            asyncio.create_task(self._drain(self.script.proc.stderr)),
            asyncio.create_task(self._pump()),
        ]
        await self._enable()

    def note(self) -> str | None:
        """The probe's note when perf had to be started again (never silent)."""
        if not self.restarts:
            return None
        return (
            f"perf record was started again {self.restarts} time(s): "
            f"{_proc.PERF_START_RACE}; its events were not enabled yet, so no hit is missing"
        )

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while True:
            chunk = await stream.read(4096)
            if not chunk:
                return
            text = chunk.decode("utf-8", "replace")
            kept = "\n".join(ln for ln in text.splitlines() if "not valid for" not in ln)
            if kept.strip():
                self.stderr_tail = (self.stderr_tail + "\n" + kept)[-4000:]

    async def _pump(self) -> None:
        """Copy perf record's pipe to perf script, adding two rounds after each chunk.

        perf script sorts events and prints a round's events only when the next
        round ends, so without this a burst of hits waits for the next burst.
        """
        assert self.record is not None and self.script is not None
        src = self.record.proc.stdout
        dst = self.script.proc.stdin
        assert src is not None and dst is not None
        framer = PipeFramer()
        try:
            while True:
                chunk = await src.read(1 << 16)
                if not chunk:
                    break
                dst.write(framer.feed(chunk))
                await dst.drain()
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:
            with contextlib.suppress(Exception):
                dst.close()

    async def _enable(self) -> None:
        """Tell perf record to enable its events; return once it acknowledges."""
        assert self.record is not None
        ctl, ack = self._fifos
        os.write(ctl, b"enable\n")
        deadline = time.monotonic() + TIMEOUT_S
        got = b""
        while time.monotonic() < deadline:
            rc = self.record.returncode
            if rc is not None:
                # Its stderr to the end: the race is told by what perf did not print.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._tasks[0]), 5)
                why = (
                    f"it stopped at its start {self.restarts + 1} times in a row: "
                    f"{_proc.PERF_START_RACE}; try again"
                    if _proc.perf_lost_a_thread_at_start(rc, self.stderr_tail)
                    else _proc.tool_message(self.stderr_tail, rc)
                )
                raise _proc.ToolFailed(
                    f"perf record failed: {why}",
                    argv=self.plan.record,
                    returncode=rc,
                    stderr=self.stderr_tail,
                )
            with contextlib.suppress(BlockingIOError):
                got += os.read(ack, 64)
            if b"ack" in got:
                return
            await asyncio.sleep(0.01)
        raise _proc.ToolTimeout(
            "perf record did not enable its events in time", argv=self.plan.record
        )

    async def items(self) -> AsyncIterator[Item]:
        assert self.script is not None and self.script.proc.stdout is not None
        last_hist = 0.0
        async for lines in _proc.line_batches(self.script.proc.stdout):
            for line in lines:
                item = self.parser.feed(line.decode("utf-8", "replace"))
                if item is not None:
                    yield item
            if self.spec.mode == "histogram" and time.monotonic() - last_hist > 0.5:
                last_hist = time.monotonic()
                yield Buckets(self.parser.hist.buckets())
        if self.spec.mode != "events":
            yield Counts(self.parser.hits)
        if self.spec.mode == "histogram":
            yield Buckets(self.parser.hist.buckets())

    def interrupt(self) -> None:
        """Ask perf record to finish; perf script then drains and exits, ending :meth:`items`."""
        if self.record is not None:
            self.record.send_signal(signal.SIGINT)

    async def stop(self, *, grace: float = 5.0) -> None:
        """SIGINT perf record (it flushes), let perf script drain, then delete our events."""
        try:
            await self._end_pipeline(grace=grace)
        finally:
            with contextlib.suppress(_proc.ProcError):
                await _proc.run(self.plan.delete, timeout=TIMEOUT_S, check=False)

    async def _end_pipeline(self, *, grace: float) -> None:
        """perf record and perf script ended and reaped, their control FIFOs gone; the
        events stay (a restart reuses them, :meth:`stop` deletes them)."""
        try:
            if self.record is not None:
                await self.record.stop(grace=grace)
            if self.script is not None:
                await self.script.stop(grace=grace)
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            self._tasks = []
            for fd in self._fifos:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fifos = []
            shutil.rmtree(self.plan.control_dir, ignore_errors=True)

    def message(self) -> str:
        return _proc.tool_message(self.stderr_tail, -1)


async def version() -> str | None:
    try:
        done = await _proc.run(["perf", "--version"], timeout=10)
    except _proc.ProcError:
        return None
    return done.text.strip().removeprefix("perf version").strip() or None
