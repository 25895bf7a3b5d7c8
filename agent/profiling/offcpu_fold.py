"""Off-CPU profiles: the bpftrace program and the perf command, their output, folded
stacks weighted by time off CPU (pure).

Two recorders, chosen per target by the planner (:func:`agent.profiling.planner.plan`):

* **bpftrace, frame pointers** (``call_graph: fp``): cheap per switch, stacks walked
  in the kernel by frame pointers. Right for Go (frame pointers everywhere, and its
  syscalls do not go through libc). Wrong through libc and any other library built
  without frame pointers: the walk from inside it skips the caller's frame, so the
  app's function that blocked is lost (``main;clock_nanosleep``).
* **perf, DWARF** (``call_graph: dwarf``): :func:`perf_argv` records
  ``sched:sched_switch`` with a copy of each switching-out thread's user stack (perf
  unwinds it later with ``.eh_frame``, which libc has) and ``--switch-events`` (every
  switch-in and switch-out of the targets' threads, without stacks). :class:`PerfTimedFolder`
  weighs each stack by the time from its switch-out to that thread's next switch-in.
  Costlier per recorded switch (the stack copy), so past a rate only one switch-out
  in ``period`` gets a stack (perf's ``-c``), weighted ``period`` times.

The bpftrace recorder: one probe, ``tracepoint:sched:sched_switch`` (a stable tracepoint; kprobes on
``finish_task_switch`` need tracefs and its name changes between kernels):

* when a target thread is switched out (it is ``curtask``), its time and its
  kernel and user stacks are kept in per-thread maps: the stacks at the moment
  it went off CPU;
* when that thread is switched back in (it is ``next_pid``), the time it spent
  off CPU is added to ``@off[pid, kstack, ustack, comm]``, in nanoseconds.

Every reason to leave the CPU counts (sleeps, locks, I/O, and waiting for a CPU
when preempted), which is what "where do my threads wait" needs. The maps are
aggregated in the kernel and printed once at the end, so the cost is the probe
on each context switch plus two stack walks per switch-out of a target thread
(measured in bench/offcpu_bench.py).

Targets are chosen by the pid the agent sees: bpftrace's ``pid`` is the node's,
so the program reads the thread group leader's pid in its own innermost pid
namespace (``struct pid``'s ``numbers[level]``) and checks that namespace is the
agent's, whose inode number it is given.

User stacks are printed as raw addresses (bpftrace cannot symbolize a process
whose /proc it does not see under the node's pid); :mod:`agent.symbols` names
them with the targets' own ELF files, through /proc/PID/root.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tracecar_formats.collapse import StackSymbolizer

__all__ = [
    "DEFAULT_MAX_DWARF_STACKS_PER_S",
    "DEFAULT_MAX_STACKS_PER_S",
    "DWARF_FLOOR_US_PER_SWITCH",
    "DWARF_MAX_RECORD_BYTES",
    "DWARF_STACK_BYTES",
    "ENV",
    "PERF_SCRIPT_FIELDS",
    "OffCpuStack",
    "PerfTimedFolder",
    "StackNamer",
    "TimedStats",
    "argv",
    "dwarf_period",
    "fold",
    "parse_output",
    "perf_argv",
    "perf_script_argv",
    "program",
    "sampler_program",
    "sampling_weight",
]

ENV = {
    # Distinct (pid, stacks) keys kept; the default 4096 is small for a whole pod.
    "BPFTRACE_MAP_KEYS_MAX": "65536",
}


DEFAULT_MAX_STACKS_PER_S = 2_000

# $u: the current thread's process as its own innermost PID namespace numbers it
# (struct pid's numbers[level]), with that namespace ($u->ns).
_NS_PID = (
    "$g = ((struct task_struct *)curtask)->group_leader->thread_pid;\n"
    "  $u = (struct upid *)((uint64)$g + sizeof(struct pid) + $g->level * sizeof(struct upid));"
)


def sampler_program(
    *, pid_ns: int, frequency_hz: int, wall_offset_ns: int, pids: Iterable[int] = ()
) -> str:
    """The flight recorder's program: on-CPU samples of every process of the agent's PID
    namespace (so processes started later count), counted per stack, and printed (then
    cleared) just after each wall-clock second ends, labelled with that second.

    bpftrace's ``nsecs`` is CLOCK_MONOTONIC; ``wall_offset_ns`` (CLOCK_REALTIME minus
    it, measured by the agent) turns it into Unix time, so each printed map is exactly
    the samples of one Unix second (to within the 50 ms check), whatever second
    bpftrace started in: the printf line ``SECOND`` comes first, then the map, then
    ``end SECOND``. bpftrace prints nothing for an empty map, so the end line is what
    says a second in which the target never ran is over (without it the ring waited
    for the next second that had samples: on a loaded node, seconds).
    ``pids``: only these processes (a pid target), filtered in the kernel, so
    bpftrace formats no other process's stacks; none: every process.
    """
    only = "".join(f" || $u->nr == {p}" for p in sorted(set(pids)))
    only = f" && (0{only})" if only else ""
    return f"""profile:hz:{frequency_hz} {{
  {_NS_PID}
  if ($u->ns->ns.inum == {pid_ns}{only}) {{
    @s[$u->nr, kstack(perf), ustack(perf), comm] = count();
  }}
}}
interval:ms:50 {{
  $sec = (nsecs + {wall_offset_ns}) / 1000000000;
  if ($sec != @sec) {{
    printf("%d\\n", @sec); print(@s); clear(@s); printf("end %d\\n", @sec); @sec = $sec;
  }}
}}
"""


def program(
    *,
    pids: Iterable[int],
    pid_ns: int,
    duration_s: float,
    max_stacks_per_s: int = DEFAULT_MAX_STACKS_PER_S,
) -> str:
    """The bpftrace program recording the off-CPU time of ``pids`` (shown by dry_run).

    The cost bound: the stack walks are the expensive part, so when the targets
    leave the CPU more often than ``max_stacks_per_s`` (measured over each 100 ms),
    only one switch in ``w`` is recorded, at random, and its time counts ``w``
    times: the totals stay unbiased and the cost stays bounded. ``@wmax`` (printed
    at the end) is the largest ``w`` used; 1 means every switch was recorded.
    """
    targets = " ".join(f"@__t[{p}] = 1;" for p in sorted(set(pids)))
    budget = max(1, max_stacks_per_s // 10)  # per 100 ms
    return f"""BEGIN {{ {targets} @wmax = max(1); }}
tracepoint:sched:sched_switch {{
  {_NS_PID}
  if ($u->ns->ns.inum == {pid_ns} && @__t[$u->nr]) {{
    @__c = @__c + 1;
    $w = @__w + 1;
    if (rand % $w == 0) {{
      @__s[tid] = nsecs; @__p[tid] = $u->nr; @__x[tid] = $w;
      @__k[tid] = kstack(perf); @__u[tid] = ustack(perf);
    }}
  }}
  $n = args->next_pid;
  $s = @__s[$n];
  if ($s) {{
    @off[@__p[$n], @__k[$n], @__u[$n], args->next_comm] = sum((nsecs - $s) * @__x[$n]);
    delete(@__s[$n]); delete(@__p[$n]); delete(@__x[$n]); delete(@__k[$n]); delete(@__u[$n]);
  }}
}}
interval:ms:100 {{ @__w = @__c / {budget}; @__c = 0; @wmax = max(@__w + 1); }}
interval:ms:{max(1, round(duration_s * 1000))} {{ exit(); }}
END {{
  clear(@__s); clear(@__p); clear(@__x); clear(@__k); clear(@__u); clear(@__t);
  clear(@__c); clear(@__w);
  print(@off); clear(@off); print(@wmax); clear(@wmax);
}}
"""


def sampling_weight(text: str) -> int:
    """The largest ``w`` the program used (1: every switch off the CPU was recorded)."""
    for line in text.splitlines():
        if line.startswith('{"type": "stats"') or '"@wmax"' in line:
            value = json.loads(line).get("data", {}).get("@wmax")
            if isinstance(value, int):
                return value
    return 1


def argv(program_text: str) -> list[str]:
    return ["bpftrace", "-f", "json", "-e", program_text]


@dataclass(frozen=True, slots=True)
class OffCpuStack:
    pid: int
    comm: str
    kernel: tuple[str, ...]  # function names, innermost first
    user: tuple[int, ...]  # addresses, innermost first
    ns: int


# "PID,<kstack>,<ustack>,COMM": each stack is empty or "\n" then "\tADDR SYMBOL\n" lines.
_KEY = re.compile(r"(\d+),((?:\n(?:\t[^\n]*\n)*)?),((?:\n(?:\t[^\n]*\n)*)?),(.*)", re.S)
_OFFSET = re.compile(r"\+\d+$")


def _frames(text: str) -> list[tuple[int, str]]:
    out = []
    for line in text.split("\n"):
        addr, _, sym = line.strip().partition(" ")
        if addr:
            out.append((int(addr, 16), sym))
    return out


def parse_output(text: str, *, map_name: str = "@off") -> list[OffCpuStack]:
    """The ``@off`` map (or another keyed the same way) from bpftrace's ``-f json`` output."""
    out: list[OffCpuStack] = []
    for line in text.splitlines():
        if not line.startswith('{"type": "map"'):
            continue
        data = json.loads(line).get("data", {}).get(map_name)
        if not isinstance(data, dict):
            continue
        for key, ns in data.items():
            m = _KEY.fullmatch(key)
            if m is None or not isinstance(ns, int):
                continue
            kernel = tuple(_OFFSET.sub("", sym) or f"{addr:#x}" for addr, sym in _frames(m[2]))
            user = tuple(addr for addr, _ in _frames(m[3]))
            out.append(OffCpuStack(int(m[1]), m[4], kernel, user, ns))
    return out


Symbolizer = Callable[[int, list[int]], list[str]]
"""One name per address of a process (the addresses of its stacks, each once)."""
StackNamer = Callable[[int, tuple[int, ...]], list[str]]
"""A process's user stack (innermost first) -> its frames, root first: may expand an
address into inlined frames and put back a frameless leaf's caller
(:class:`agent.symbolize.ustacks.UserStacks`)."""


def fold(
    stacks: Iterable[OffCpuStack],
    *,
    names: Symbolizer | None = None,
    stack_names: StackNamer | None = None,
    divisor: int = 1000,
) -> dict[str, int]:
    """Folded stacks weighted by microseconds off CPU: ``comm;user...;kernel... us``.

    Root first, as stackcollapse-perf writes CPU stacks (the comm's spaces as
    ``_``), so both kinds of profile render, diff and export alike. ``divisor``:
    1000 turns nanoseconds into microseconds; 1 keeps counts (the flight recorder's
    samples, keyed the same way). User frames are named by ``stack_names`` (each
    distinct stack once) when given, else by ``names`` (each distinct address once).
    """
    stacks = list(stacks)
    resolved: dict[tuple[int, int], str] = {}
    whole: dict[tuple[int, tuple[int, ...]], list[str]] = {}
    if stack_names is not None:
        for s in stacks:
            if (s.pid, s.user) not in whole:
                whole[(s.pid, s.user)] = stack_names(s.pid, s.user)
    elif names is not None:
        by_pid: dict[int, list[int]] = {}
        for s in stacks:
            by_pid.setdefault(s.pid, []).extend(s.user)
        for pid, addrs in by_pid.items():
            unique = sorted(set(addrs))
            resolved.update(zip(((pid, a) for a in unique), names(pid, unique), strict=True))
    else:
        raise TypeError("fold() needs names or stack_names")
    ns_by_stack: dict[str, int] = {}
    for s in stacks:
        frames = [s.comm.replace(" ", "_") or "[unknown]"]
        if stack_names is not None:
            frames += whole[(s.pid, s.user)]
        else:
            frames += [resolved[(s.pid, a)] for a in reversed(s.user)]
        frames += list(reversed(s.kernel))
        key = ";".join(f.replace(";", ":") for f in frames)
        ns_by_stack[key] = ns_by_stack.get(key, 0) + s.ns
    folded = {k: round(v / divisor) for k, v in ns_by_stack.items()}
    return {k: v for k, v in folded.items() if v > 0}


# --- perf, DWARF-unwound -------------------------------------------------------------

DWARF_STACK_BYTES = 8192
"""User stack copied at each recorded switch-out. A thread blocks at the bottom of a
call chain that is rarely deep in bytes (the tests' C programs reach ``_start`` and
CPython 3.12 reaches ``Py_BytesMain`` within 8 KiB; stacks that do not are counted as
``cut_short``); it is copied into perf's buffer at every recorded switch-out, 1-2 µs of
the app's CPU each here (bench/offcpu_bench.py), and kept in perf.data."""

DEFAULT_MAX_DWARF_STACKS_PER_S = 1_000
"""Stacks copied per second at most (then one switch-out in ``period``): 8 MiB/s of
perf.data at 8 KiB each."""

DWARF_MAX_RECORD_BYTES = 256 << 20
"""Stack copies one recording may hold at most (at the switch rate measured before it):
a long recording gets fewer stacks a second, so perf.data stays within the agent's
storage (each stack copy is ``DWARF_STACK_BYTES`` of it)."""

DWARF_FLOOR_US_PER_SWITCH = 0.4
"""What perf's events on the targets' threads cost per switch of those threads, stacks
or not (the kernel switches a thread's perf events with it; bench/offcpu_bench.py's
"perf events alone": 0.35-0.5 µs here, against 0.1-0.25 µs for the bpftrace probe)."""

PERF_SCRIPT_FIELDS = "comm,pid,tid,time,event,ip,sym,dso"


def dwarf_period(
    switches_per_s: float,
    *,
    max_stacks_per_s: int,
    duration_s: float = 0.0,
    stack_bytes: int = DWARF_STACK_BYTES,
) -> int:
    """One switch-out in how many gets a stack, for targets switching this often: at most
    ``max_stacks_per_s``, and at most ``DWARF_MAX_RECORD_BYTES`` of stacks over
    ``duration_s``."""
    budget = float(max_stacks_per_s)
    if duration_s > 0:
        budget = min(budget, DWARF_MAX_RECORD_BYTES / stack_bytes / duration_s)
    if switches_per_s <= budget:
        return 1
    return math.ceil(switches_per_s / budget)


def perf_argv(
    *, pids: Iterable[int], output: str, duration_s: float, stack_bytes: int, period: int
) -> list[str]:
    """``perf record`` of the targets' switch-outs with their user stacks (DWARF) and of
    every switch of their threads (``--switch-events``: the switch-in times).

    ``--no-period``: perf asks for the period in each tracepoint sample by default, and
    the kernel then samples every event whatever ``-c`` says (seen with perf 6.1:
    ``-c 600`` still gave a stack per switch); without it, ``-c`` is one in ``period``.
    """
    return [
        "perf",
        "record",
        "-e",
        "sched:sched_switch",
        "-c",
        str(period),
        "--no-period",
        "--switch-events",
        "--call-graph",
        f"dwarf,{stack_bytes}",
        "-p",
        ",".join(str(p) for p in sorted(set(pids))),
        "-o",
        output,
        "--",
        "sleep",
        f"{duration_s:g}",
    ]


def perf_script_argv(perf_data: str, *, perf: str = "perf") -> list[str]:
    """``perf script`` printing the samples and the switch records, in time order, with
    nanosecond times. ``--no-inline``: inline resolution runs addr2line, minutes on big
    binaries."""
    return [
        perf,
        "script",
        "-i",
        perf_data,
        "--no-inline",
        "--ns",
        "--show-switch-events",
        "-F",
        PERF_SCRIPT_FIELDS,
    ]


# "comm pid/tid sec.nsec: rest" (comm may hold spaces; perf pads pid/tid and time).
_HEADER = re.compile(rb"^(.*?)\s+(-?\d+)/(-?\d+)\s+(\d+)\.(\d{9}):\s*(.*)$")
# "\t ADDR SYM (DSO)" or "\t ADDR SYM+0xOFF (DSO)".
_FRAME = re.compile(rb"^\s*([0-9a-fA-F]+)\s+(.*?)\s+\((.*)\)\s*$")
_KERNEL_START = 0xFFFF800000000000  # x86-64 and arm64: the kernel's half of the address space
_FRAME_OFFSET = re.compile(rb"\+0x[0-9a-f]+$")
_GO_METHOD = re.compile(rb"\.\(.*\)\.")
_ARGS = re.compile(rb"\((?!anonymous namespace\)).*")
# Where a thread's stack starts: an unwind that ends elsewhere was cut short.
_ROOTS = frozenset(
    {
        "_start",
        "__libc_start_main",
        "__libc_start_call_main",
        "start_thread",
        "clone",
        "clone3",
        "__clone",
        "__clone3",
        "runtime.goexit",
        "runtime.goexit.abi0",
        "runtime.rt0_go",
        "runtime.rt0_go.abi0",
        "runtime.mstart",
        "runtime.mstart.abi0",
    }
)


@dataclass(frozen=True, slots=True)
class _Frame:
    name: str
    kernel: bool
    pc: bytes
    dso: bytes
    sym: bytes  # perf's own name (offset cut), ``[unknown]`` when it had none


def _tidy(sym: bytes) -> str:
    if _GO_METHOD.search(sym) is None:
        sym = _ARGS.sub(b"", sym, count=1) or sym
    return sym.replace(b";", b":").decode("utf-8", "replace")


def _frame_name(line: bytes) -> _Frame | None:
    """A frame's name as the CPU profiles' collapser writes it (``[dso]`` if unknown),
    whether it is the kernel's, and its address and object as perf printed them."""
    m = _FRAME.match(line)
    if m is None:
        return None
    kernel = int(m.group(1), 16) >= _KERNEL_START
    sym, dso = m.group(2), m.group(3)
    sym = _FRAME_OFFSET.sub(b"", sym, count=1)
    if sym == b"[unknown]" or not sym:
        base = dso.rpartition(b"/")[2]
        name = (
            "["
            + (base if base and base != b"[unknown]" else b"unknown").decode("utf-8", "replace")
            + "]"
        )
    else:
        name = _tidy(sym)
    return _Frame(name, kernel, m.group(1), dso, sym or b"[unknown]")


@dataclass(slots=True)
class TimedStats:
    """What the weighting saw, for the profile's notes."""

    stacks: int = 0
    """Switch-outs with a stack."""
    matched: int = 0
    """...whose switch-in was seen: their time is exact."""
    open_at_end: int = 0
    """...still off CPU when the recording ended: counted up to its last event."""
    unmatched: int = 0
    """...followed by another switch-out of the same thread before any switch-in
    (the switch-in record was lost): not counted."""
    cut_short: int = 0
    """...whose user stack does not reach the thread's first frame (``_start``,
    ``start_thread``, ``clone``): the stack copy was too small, or a frame had no
    unwind information."""
    no_user_stack: int = 0


_MISS = _Frame("", False, b"", b"", b"")  # sentinel (compared by identity)
_FRAME_CACHE_MAX = 1 << 18


@dataclass(slots=True)
class _Pending:
    start_ns: int
    key: str
    user_cut: bool


class PerfTimedFolder:
    """``perf script`` text (:func:`perf_script_argv`), fed line by line, into folded
    stacks weighted by microseconds off CPU: ``comm;user...;kernel...``, root first,
    as the bpftrace recorder writes them.

    ``symbolizer``: the CPU profiles' (:class:`~tracecar_formats.collapse.StackSymbolizer`),
    which names user frames perf could not (stripped Go from its pclntab, with inlined
    calls; separate debug files), so both kinds of profile say the same names."""

    def __init__(self, *, period: int = 1, symbolizer: StackSymbolizer | None = None) -> None:
        self.period = max(1, period)
        self.stats = TimedStats()
        self.symbolizer = symbolizer
        self._ns: dict[str, int] = {}
        self._pending: dict[int, _Pending] = {}
        self._last_ns = 0
        self._frames: dict[bytes, _Frame | None] = {}
        self._named: dict[tuple[bytes, bytes, bytes, bool], list[str]] = {}
        # The sample being read: (tid, time, comm, frames innermost first, pid).
        self._cur: tuple[int, int, str, list[_Frame], bytes] | None = None

    def feed(self, line: bytes) -> None:
        if line[:1] in (b"\t", b" "):
            if self._cur is not None:
                # The same frame lines come back over and over: each is parsed once.
                frame = self._frames.get(line, _MISS)
                if frame is _MISS:
                    if len(self._frames) > _FRAME_CACHE_MAX:
                        self._frames.clear()
                    frame = self._frames[line] = _frame_name(line)
                if frame is not None:
                    self._cur[3].append(frame)
            return
        self._close_sample()
        at = line.find(b": PERF_RECORD_SWITCH")
        if at > 0:
            # Most lines of a busy recording: split, not the regex. "... PID/TID SEC.NSEC"
            head = line[:at].rsplit(None, 2)
            if len(head) == 3 and b"/" in head[1] and b"." in head[2]:
                sec, _, nsec = head[2].partition(b".")
                t = int(sec) * 1_000_000_000 + int(nsec)
                self._last_ns = max(self._last_ns, t)
                if line.startswith(b" IN", at + len(b": PERF_RECORD_SWITCH")):
                    self._switch_in(int(head[1].rpartition(b"/")[2]), t)
                return
        m = _HEADER.match(line.rstrip(b"\n"))
        if m is None:
            return
        tid = int(m.group(3))
        t = int(m.group(4)) * 1_000_000_000 + int(m.group(5))
        self._last_ns = max(self._last_ns, t)
        rest = m.group(6)
        if rest.startswith(b"PERF_RECORD_SWITCH"):
            if b" IN" in rest[len(b"PERF_RECORD_SWITCH") :]:
                self._switch_in(tid, t)
            return
        if b"sched_switch" in rest:
            comm = m.group(1).strip().decode("utf-8", "replace")
            self._cur = (tid, t, comm, [], m.group(2))

    def _names(self, pid: bytes, frame: _Frame, *, caller: bool) -> list[str]:
        """A user frame's names, outermost first: the symbolizer's, else perf's."""
        key = (pid, frame.pc, frame.dso, caller)  # (perf names a pc alike every time)
        names = self._named.get(key)
        if names is None:
            assert self.symbolizer is not None
            try:
                got = self.symbolizer.frames(pid, frame.pc, frame.sym, frame.dso, caller=caller)
            except Exception:  # a process gone meanwhile (its /proc too): perf's name stands
                got = None
            names = [_tidy(f) for f in got] if got else [frame.name]
            if len(self._named) > _FRAME_CACHE_MAX:
                self._named.clear()
            self._named[key] = names
        return names

    def _close_sample(self) -> None:
        if self._cur is None:
            return
        tid, t, comm, frames, pid = self._cur
        self._cur = None
        self.stats.stacks += 1
        user = [f.name for f in frames if not f.kernel]
        cut = bool(user) and user[-1] not in _ROOTS
        if not user:
            self.stats.no_user_stack += 1
        if self.symbolizer is None:
            names = [f.name for f in reversed(frames)]
        else:
            names = []
            leaf = next((i for i, f in enumerate(frames) if not f.kernel), -1)
            for i in range(len(frames) - 1, -1, -1):
                f = frames[i]
                names += [f.name] if f.kernel else self._names(pid, f, caller=i != leaf)
        key = ";".join([comm.replace(" ", "_") or "[unknown]", *names])
        if tid in self._pending:
            self.stats.unmatched += 1
        self._pending[tid] = _Pending(t, key, cut)

    def _switch_in(self, tid: int, t: int) -> None:
        p = self._pending.pop(tid, None)
        if p is None:
            return
        self.stats.matched += 1
        self._add(p, t)

    def _add(self, p: _Pending, end_ns: int) -> None:
        if p.user_cut:
            self.stats.cut_short += 1
        ns = max(0, end_ns - p.start_ns) * self.period
        self._ns[p.key] = self._ns.get(p.key, 0) + ns

    def finish(self) -> dict[str, int]:
        """The folded stacks (microseconds). Threads still off CPU count up to the last
        event of the recording (its end, as near as the record says)."""
        self._close_sample()
        for p in self._pending.values():
            self.stats.open_at_end += 1
            self._add(p, self._last_ns)
        self._pending.clear()
        folded = {k: round(v / 1000) for k, v in self._ns.items()}
        return {k: v for k, v in folded.items() if v > 0}
