"""Off-CPU profiles with bpftrace: the program, its output, folded stacks (pure).

One probe, ``tracepoint:sched:sched_switch`` (a stable tracepoint; kprobes on
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
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = [
    "DEFAULT_MAX_STACKS_PER_S",
    "ENV",
    "OffCpuStack",
    "argv",
    "fold",
    "parse_output",
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
    bpftrace started in: the printf line ``SECOND`` comes first, then the map.
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
  if ($sec != @sec) {{ printf("%d\\n", @sec); print(@s); clear(@s); @sec = $sec; }}
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


def fold(
    stacks: Iterable[OffCpuStack], *, names: Symbolizer, divisor: int = 1000
) -> dict[str, int]:
    """Folded stacks weighted by microseconds off CPU: ``comm;user...;kernel... us``.

    Root first, as stackcollapse-perf writes CPU stacks (the comm's spaces as
    ``_``), so both kinds of profile render, diff and export alike. ``divisor``:
    1000 turns nanoseconds into microseconds; 1 keeps counts (the flight recorder's
    samples, keyed the same way).
    """
    stacks = list(stacks)
    by_pid: dict[int, list[int]] = {}
    for s in stacks:
        by_pid.setdefault(s.pid, []).extend(s.user)
    resolved: dict[tuple[int, int], str] = {}
    for pid, addrs in by_pid.items():
        unique = sorted(set(addrs))
        resolved.update(zip(((pid, a) for a in unique), names(pid, unique), strict=True))
    ns_by_stack: dict[str, int] = {}
    for s in stacks:
        frames = [s.comm.replace(" ", "_") or "[unknown]"]
        frames += [resolved[(s.pid, a)] for a in reversed(s.user)]
        frames += list(reversed(s.kernel))
        key = ";".join(f.replace(";", ":") for f in frames)
        ns_by_stack[key] = ns_by_stack.get(key, 0) + s.ns
    folded = {k: round(v / divisor) for k, v in ns_by_stack.items()}
    return {k: v for k, v in folded.items() if v > 0}
