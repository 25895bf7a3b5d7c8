"""Memory profiles of native code: the bpftrace program on the C allocator, its output,
folded stacks weighted by bytes and by allocations (pure).

Two types of profile share one program:

* ``alloc``: where the targets allocate, every allocation of the window (freed or not);
* ``leak``: what is still outstanding when the window ends (allocated in it, not freed):
  the memleak approach, with the addresses of sampled allocations kept in a bounded map
  until they are freed.

The probes (uprobes, and uretprobes for the returned addresses), on the object that
provides the target's allocator (glibc's ``libc.so.6``, or jemalloc or tcmalloc where
the binary links them, or the executable itself when it is statically linked with its
symbols): ``malloc``, ``calloc``, ``realloc``, ``posix_memalign``, ``aligned_alloc``,
``memalign``, ``free``, and anonymous ``mmap``/``munmap`` (large blocks an app maps
itself). A call made *inside* another allocator call (glibc's ``realloc(NULL, n)``
calling ``malloc``, ``malloc`` mapping a large block with ``mmap``) is not counted
twice: a per-thread flag, set at entry and cleared at return, skips nested calls.

**The allocating function.** At the allocator's entry, a frame-pointer walk starts at
the allocator's own address and goes on from the frame pointer, which is still the
*caller's*: the walk finds the caller's return address (into the caller's caller) and
skips the caller itself, which is exactly the frame a user needs (``main;malloc``
instead of ``main;leaky_work;malloc``). The caller's return address is the word at the
top of the stack at entry: the program reads it (``*(uint64 *)reg("sp")``) and
:func:`fold` puts it back between the allocator and the rest of the walk.

**Sampling**, so the cost of the BPF side stays bounded: every allocation of at least
``large_bytes`` is recorded (weight 1), and one smaller allocation in ``period``, at
random (weight ``period``): the totals stay unbiased, said in the output. Every
allocation is *counted* (calls and bytes, exactly, per process), so the estimate can be
checked against the truth. The uprobe itself (a trap into the kernel) is paid by every
call, sampled or not: that is the floor of the cost (bench/memory_bench.py).

**Bounds.** ``leak``: at most ``max_outstanding`` sampled allocations are tracked at
once; past it, new ones are counted as dropped (reported), not tracked. The stacks live
in bpftrace's stack map (sized by ``BPFTRACE_MAP_KEYS_MAX``); a stack that does not fit
there is lost and counted from bpftrace's messages.

**Where free is probed.** A uprobe whose first instruction the kernel can emulate (a
branch, a push, a nop) costs one trap; any other is single-stepped out of line, a second
trap, tens of microseconds in a VM. glibc's ``free`` begins with ``test %rdi,%rdi``, so a
leak profile, which must see every free, would pay that on each one. :func:`entry_skip`
finds the leading instructions of a function that change no argument register and that
the kernel single-steps (a short table of exact encodings, nothing guessed), and the free
probes sit past them (``free+3``, at glibc's branch) when bpftrace can place a probe at
an offset (built with binutils' disassembler, which checks the offset is an instruction
boundary: scripts/images.d/bpftrace).

Targets are selected by the pid the agent sees, in its own PID namespace, as the
off-CPU program does (:mod:`agent.profiling.offcpu`). bpftrace 0.17 attaches uprobes
to the library file for *every* process mapping it (its ``-p`` does not restrict
uprobes): the program returns at once for the others, but each of their allocator
calls still traps while the profile runs (said in the plan's notes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "ALLOCATORS",
    "ATTACHED",
    "DEFAULT_LARGE_BYTES",
    "DEFAULT_MAX_OUTSTANDING",
    "DEFAULT_PERIOD",
    "ENTRY_FUNCTIONS",
    "STACK_DEPTH",
    "AllocOutput",
    "Allocator",
    "MemoryKind",
    "Probe",
    "Site",
    "Stats",
    "argv",
    "entry_skip",
    "env",
    "fold",
    "parse_output",
    "program",
]

MemoryKind = Literal["alloc", "leak"]

ATTACHED = "tracecar:attached"
"""Printed by BEGIN: every probe is in, allocations from now on are recorded."""

DEFAULT_PERIOD = 16
"""One allocation smaller than ``large_bytes`` in 16 is recorded (weighted 16)."""
DEFAULT_LARGE_BYTES = 64 * 1024
"""Allocations of 64 KiB and more are all recorded: few, and each one matters."""
DEFAULT_MAX_OUTSTANDING = 16_384
"""leak: sampled allocations tracked at once. bpftrace sizes every map of the program
(and its stack map) by one setting, preallocated and charged to the agent's memory
cgroup: about 2.5 KB per tracked allocation here (bench/memory_bench.py), so 16,384
(x16 sampling: ~260k outstanding allocations represented) keeps it near 100 MiB."""
STACK_DEPTH = 48
"""User frames kept per stack (bpftrace's default is 127; each stack map entry holds
``8 * depth`` bytes, preallocated)."""

# The allocation functions, the argument holding the size, and the probe's number in
# the maps (so one map holds all of them, and the folded stack can name which).
ENTRY_FUNCTIONS: dict[str, str] = {
    "malloc": "arg0",
    "calloc": "arg0 * arg1",
    "realloc": "arg1",
    "posix_memalign": "arg2",
    "aligned_alloc": "arg1",
    "memalign": "arg1",
    "mmap": "arg1",
}
FREE_FUNCTIONS = ("free", "munmap")
_KIND_ID = {name: i + 1 for i, name in enumerate(ENTRY_FUNCTIONS)}
_KIND_NAME = {i: name for name, i in _KIND_ID.items()}
_MAP_ANONYMOUS = 0x20

ALLOCATORS = ("glibc", "jemalloc", "tcmalloc", "static")
"""Where the allocator comes from: glibc's libc, jemalloc, tcmalloc, or the executable
itself (statically linked, or an allocator of its own under the same names)."""


@dataclass(frozen=True, slots=True)
class Probe:
    """One object to probe: the file (as the agent reaches it) and its functions."""

    path: str
    """The host path bpftrace attaches to (``/proc/PID/root/...``)."""
    functions: tuple[str, ...]
    offsets: tuple[tuple[str, int], ...] = ()
    """(function, offset): functions probed past their entry (:func:`entry_skip`)."""

    def at(self, name: str) -> str:
        off = dict(self.offsets).get(name, 0)
        return f"{self.path}:{name}+{off}" if off else f"{self.path}:{name}"


# Instructions a function may begin with that the kernel single-steps at a uprobe (it
# emulates branches, calls, pushes and nops only) and that change no argument register,
# so a probe just past them sees the same arguments: exact encodings, longest first.
_SKIPPABLE: tuple[tuple[bytes, str], ...] = (
    (bytes.fromhex("f30f1efa"), "endbr64"),
    (bytes.fromhex("4885ff"), "test %rdi,%rdi"),
)


def entry_skip(code: bytes) -> tuple[int, tuple[str, ...]]:
    """How far past a function's entry its probe can sit (x86-64 code at the entry).

    The leading instructions of ``code`` that are in the table (and only those), and
    their length; (0, ()) when the first instruction is anything else, including one the
    kernel emulates (nothing to gain). glibc 2.36's free: (3, ("test %rdi,%rdi",))."""
    at, names = 0, []
    while True:
        for encoding, name in _SKIPPABLE:
            if code.startswith(encoding, at):
                at += len(encoding)
                names.append(name)
                break
        else:
            return at, tuple(names)


@dataclass(frozen=True, slots=True)
class Allocator:
    """One target's allocator, as the planner found it."""

    pid: int
    flavor: str
    path: str
    """The object as the process sees it (``/usr/lib/x86_64-linux-gnu/libc.so.6``)."""
    host_path: str
    functions: tuple[str, ...]
    """The allocation and free functions it defines (of ENTRY_FUNCTIONS and FREE_FUNCTIONS)."""
    identity: tuple[int, int] = (0, 0)
    """(device, inode) of the file: one uprobe per file, whichever target's path names it."""
    entry_skips: tuple[tuple[str, int, str], ...] = ()
    """FREE_FUNCTIONS that begin with instructions a probe can sit past (:func:`entry_skip`):
    (function, offset, the instructions, as an assembler writes them)."""


_NS_PID = (
    "$g = ((struct task_struct *)curtask)->group_leader->thread_pid;\n"
    "    $u = (struct upid *)((uint64)$g + sizeof(struct pid) + $g->level * sizeof(struct upid));"
)


ALLOC_MAP_KEYS = 8192
"""alloc: distinct (caller, stack) pairs kept; the maps need no room for addresses."""


def env(*, max_outstanding: int, kind: MemoryKind = "leak") -> dict[str, str]:
    """bpftrace's environment: the maps' size (leak: the tracked allocations, with room
    for the per-thread maps; alloc: the distinct stacks)."""
    if kind == "alloc":
        return {"BPFTRACE_MAP_KEYS_MAX": str(ALLOC_MAP_KEYS)}
    return {"BPFTRACE_MAP_KEYS_MAX": str(max(4096, max_outstanding + max_outstanding // 4))}


def _entry(name: str, size: str, *, kind: MemoryKind, filt: str) -> str:
    """One allocation function's entry probe body (inside the target check)."""
    kid = _KIND_ID[name]
    anon = f" && (arg3 & {_MAP_ANONYMOUS})" if name == "mmap" else ""
    record: str
    if kind == "alloc":
        record = (
            f"@bytes[$u->nr, $ra, ustack(perf, {STACK_DEPTH}), {kid}] = sum($size * $w);\n"
            f"        @count[$u->nr, $ra, ustack(perf, {STACK_DEPTH}), {kid}] = sum($w);"
        )
    else:
        record = (
            f"@__st[tid] = ustack(perf, {STACK_DEPTH}); @__ra[tid] = $ra; "
            f"@__sz[tid] = $size; @__w[tid] = $w; @__k[tid] = {kid};"
        )
    realloc_free = ""
    if name == "realloc" and kind == "leak":
        realloc_free = "\n      " + _forget("arg0")
    memptr = "\n      @__mp[tid] = arg0;" if name == "posix_memalign" else ""
    return f"""{filt} {{
  {_NS_PID}
  if (@__in[tid] == 0 && $u->ns->ns.inum == $$NS && @__t[$u->nr]{anon}) {{
    @__in[tid] = 1; @__pid[tid] = $u->nr;
    $size = {size};
    @calls[$u->nr] = count(); @total[$u->nr] = sum($size);{realloc_free}{memptr}
    $w = (uint64)1;
    if ($size < $$LARGE) {{ $w = rand % $$PERIOD == 0 ? $$PERIOD : 0; }}
    if ($w) {{
      $ra = *(uint64 *)uptr(reg("sp"));
      {record}
      @sampled[$u->nr] = count();
    }}
  }}
}}"""


def _forget(addr: str) -> str:
    """leak: an address freed: drop it from the outstanding maps, if tracked."""
    return (
        f"if (@__lw[$u->nr, {addr}]) {{ delete(@__lw[$u->nr, {addr}]); "
        f"delete(@__lsz[$u->nr, {addr}]); delete(@__lra[$u->nr, {addr}]); "
        f"delete(@__lst[$u->nr, {addr}]); delete(@__lk[$u->nr, {addr}]); "
        "@__n = @__n - 1; }"
    )


def _return(name: str, *, kind: MemoryKind, filt: str) -> str:
    """One allocation function's return probe: the nesting flag, and (leak) the address."""
    if kind == "alloc":
        return f"{filt} {{ if (@__in[tid]) {{ delete(@__in[tid]); delete(@__pid[tid]); }} }}"
    if name == "posix_memalign":
        addr = "(retval == 0 ? *(uint64 *)uptr(@__mp[tid]) : 0)"
    elif name == "mmap":
        addr = "((int64)retval == -1 ? 0 : retval)"  # MAP_FAILED
    else:
        addr = "retval"
    return f"""{filt} {{
  if (@__in[tid]) {{
    if (@__w[tid]) {{
      $p = @__pid[tid]; $a = (uint64){addr};
      if ($a != 0) {{
        if (@__n < $$CAP) {{
          @__lsz[$p, $a] = @__sz[tid] * @__w[tid]; @__lw[$p, $a] = @__w[tid];
          @__lra[$p, $a] = @__ra[tid]; @__lst[$p, $a] = @__st[tid]; @__lk[$p, $a] = @__k[tid];
          @__n = @__n + 1;
        }} else {{ @dropped[$p] = count(); @dropped_bytes[$p] = sum(@__sz[tid] * @__w[tid]); }}
      }}
      delete(@__w[tid]); delete(@__sz[tid]); delete(@__ra[tid]); delete(@__st[tid]);
      delete(@__k[tid]);
    }}
    delete(@__in[tid]); delete(@__pid[tid]); delete(@__mp[tid]);
  }}
}}"""


def _free(name: str, filt: str) -> str:
    return f"""{filt} {{
  {_NS_PID}
  if (@__in[tid] == 0 && $u->ns->ns.inum == $$NS && @__t[$u->nr]) {{
    @frees[$u->nr] = count();
    {_forget("arg0")}
  }}
}}"""


def program(
    *,
    kind: MemoryKind,
    pids: Iterable[int],
    probes: Sequence[Probe],
    pid_ns: int,
    duration_s: float,
    period: int = DEFAULT_PERIOD,
    large_bytes: int = DEFAULT_LARGE_BYTES,
    max_outstanding: int = DEFAULT_MAX_OUTSTANDING,
) -> str:
    """The bpftrace program of a memory profile of ``pids`` (what dry_run shows).

    Each object of ``probes`` gets the entry (and return) probes of the functions it
    defines. ``alloc``: bytes and allocations by (pid, caller, stack, function), summed
    in the kernel. ``leak``: each sampled allocation's size, weight, caller, stack and
    function by (pid, address) until it is freed; what is left is printed at the end.
    """
    targets = " ".join(f"@__t[{p}] = 1;" for p in sorted(set(pids)))
    # BEGIN runs once every probe is attached (bpftrace's "attached_probes" line comes
    # before the attaching, which takes seconds on a big library): the progress marker.
    parts = [f'BEGIN {{ {targets} printf("{ATTACHED}"); }}']
    for name, size in ENTRY_FUNCTIONS.items():
        paths = [p.path for p in probes if name in p.functions]
        if not paths:
            continue
        parts.append(
            _entry(name, size, kind=kind, filt=",\n".join(f"uprobe:{p}:{name}" for p in paths))
        )
        rets = ",\n".join(f"uretprobe:{p}:{name}" for p in paths)
        parts.append(_return(name, kind=kind, filt=rets))
    if kind == "leak":
        for name in FREE_FUNCTIONS:
            with_it = [p for p in probes if name in p.functions]
            if with_it:
                parts.append(_free(name, ",\n".join(f"uprobe:{p.at(name)}" for p in with_it)))
    # bpftrace 0.17 can sit in epoll_wait after its SIGINT, with nothing to read, until
    # some output event wakes it (seen in the agent's container): a tick wakes it.
    parts.append('interval:ms:200 { printf(""); }')
    parts.append(f"interval:ms:{max(1, round(duration_s * 1000))} {{ exit(); }}")
    temps = ["@__in", "@__pid", "@__t"]
    if kind == "leak":
        temps += ["@__st", "@__ra", "@__sz", "@__w", "@__k", "@__mp", "@__n"]
    keep = ["@calls", "@total", "@sampled"]
    keep += (
        ["@bytes", "@count"]
        if kind == "alloc"
        else [
            "@__lsz",
            "@__lw",
            "@__lra",
            "@__lst",
            "@__lk",
            "@frees",
            "@dropped",
            "@dropped_bytes",
        ]
    )
    end = " ".join(f"clear({m});" for m in temps)
    end += " " + " ".join(f"print({m}); clear({m});" for m in keep)
    parts.append(f"END {{ {end} }}")
    # The settings are constants in the program (no map lookup per call).
    constants = {
        "NS": str(pid_ns),
        "PERIOD": f"(uint64){max(1, period)}",
        "LARGE": f"(uint64){max(0, large_bytes)}",
        "CAP": str(max(1, max_outstanding)),
    }
    text = "\n".join(parts) + "\n"
    return _CONSTANT.sub(lambda m: constants[m[1]], text)


_CONSTANT = re.compile(r"\$\$(NS|PERIOD|LARGE|CAP)\b")


def argv(program_text: str, *, pids: Sequence[int] = ()) -> list[str]:
    """bpftrace's command; one target: ``-p PID`` too."""
    only = ["-p", str(pids[0])] if len(pids) == 1 else []
    return ["bpftrace", "-f", "json", *only, "-e", program_text]


# --- the output -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Site:
    """Allocations from one call stack: bytes and allocations, sampling accounted for."""

    pid: int
    caller: int
    """The allocator's return address (into the function that called it)."""
    user: tuple[int, ...]
    """The frame-pointer walk from the allocator's entry, innermost first: the
    allocator's own address, then the caller's caller and on (the caller is ``caller``)."""
    function: str
    bytes: int
    count: int


@dataclass(slots=True)
class Stats:
    """One target's counts, exact (every call) and sampled, from the program's maps."""

    calls: int = 0
    bytes: int = 0
    sampled: int = 0
    frees: int = 0
    dropped: int = 0
    dropped_bytes: int = 0


@dataclass(slots=True)
class AllocOutput:
    sites: list[Site] = field(default_factory=list)
    stats: dict[int, Stats] = field(default_factory=dict)
    attached_probes: int = 0


# "PID,RA,<ustack>,KIND": the stack is empty or "\n" then "\tADDR SYMBOL\n" lines.
_ALLOC_KEY = re.compile(r"(\d+),(\d+),((?:\n(?:\t[^\n]*\n)*)?),(\d+)", re.S)
_PAIR_KEY = re.compile(r"(\d+),(\d+)")
_STAT_MAPS = {
    "@calls": "calls",
    "@total": "bytes",
    "@sampled": "sampled",
    "@frees": "frees",
    "@dropped": "dropped",
    "@dropped_bytes": "dropped_bytes",
}


def _addresses(text: str) -> tuple[int, ...]:
    out = []
    for line in text.split("\n"):
        addr = line.strip().partition(" ")[0]
        if addr:
            out.append(int(addr, 16))
    return tuple(out)


def parse_output(text: str) -> AllocOutput:
    """bpftrace's ``-f json`` output of :func:`program` (either kind)."""
    out = AllocOutput()
    maps: dict[str, dict[str, object]] = {}
    for line in text.splitlines():
        if line.startswith('{"type": "attached_probes"'):
            out.attached_probes = int(json.loads(line).get("data", {}).get("probes", 0))
        if not line.startswith('{"type": "map"'):
            continue
        data = json.loads(line).get("data", {})
        if isinstance(data, dict):
            for name, value in data.items():
                if isinstance(value, dict):
                    maps[name] = value
    for name, attr in _STAT_MAPS.items():
        for key, value in maps.get(name, {}).items():
            if key.isdigit() and isinstance(value, int):
                stats = out.stats.setdefault(int(key), Stats())
                setattr(stats, attr, value)
    counts = maps.get("@count", {})
    for key, nbytes in maps.get("@bytes", {}).items():
        m = _ALLOC_KEY.fullmatch(key)
        n = counts.get(key)
        if m is None or not isinstance(nbytes, int) or not isinstance(n, int):
            continue
        out.sites.append(
            Site(int(m[1]), int(m[2]), _addresses(m[3]), _KIND_NAME.get(int(m[4]), "?"), nbytes, n)
        )
    # leak: one entry per outstanding sampled allocation, joined on (pid, address).
    weights, callers = maps.get("@__lw", {}), maps.get("@__lra", {})
    stacks, kinds = maps.get("@__lst", {}), maps.get("@__lk", {})
    grouped: dict[tuple[int, int, tuple[int, ...], str], list[int]] = {}
    for key, nbytes in maps.get("@__lsz", {}).items():
        m = _PAIR_KEY.fullmatch(key)
        w, ra, st, k = weights.get(key), callers.get(key), stacks.get(key), kinds.get(key)
        if m is None or not isinstance(nbytes, int) or not isinstance(w, int):
            continue
        user = _addresses(st) if isinstance(st, str) else ()
        kid = _KIND_NAME.get(k, "?") if isinstance(k, int) else "?"
        g = grouped.setdefault((int(m[1]), ra if isinstance(ra, int) else 0, user, kid), [0, 0])
        g[0] += nbytes
        g[1] += w
    for (pid, ra, user, kid), (nbytes, n) in grouped.items():
        out.sites.append(Site(pid, ra, user, kid, nbytes, n))
    return out


Symbolizer = Callable[[int, list[int]], list[str]]


def fold(
    sites: Iterable[Site], *, names: Symbolizer, comms: Mapping[int, str]
) -> tuple[dict[str, int], dict[str, int]]:
    """Folded stacks weighted by bytes, and by allocations: ``comm;root...;caller;malloc``.

    The walk's first address is the allocator's own (named by the probe instead); the
    caller, read at entry, goes between it and the rest of the walk. Return addresses
    are looked up one byte back (a call's last byte: the next instruction may belong to
    the next function when the callee does not return).
    """
    sites = list(sites)
    by_pid: dict[int, set[int]] = {}
    for s in sites:
        wanted = by_pid.setdefault(s.pid, set())
        if s.caller:
            wanted.add(s.caller - 1)
        wanted.update(a - 1 for a in s.user[1:] if a)
    resolved: dict[tuple[int, int], str] = {}
    for pid, addrs in by_pid.items():
        unique = sorted(addrs)
        resolved.update(zip(((pid, a) for a in unique), names(pid, unique), strict=True))
    nbytes: dict[str, int] = {}
    count: dict[str, int] = {}
    for s in sites:
        walk = [a for a in s.user[1:] if a]
        if walk and walk[0] == s.caller:
            walk = walk[1:]  # the walk did find the caller (it kept no frame of its own)
        frames = [comms.get(s.pid, "").replace(" ", "_") or "[unknown]"]
        frames += [resolved[(s.pid, a - 1)] for a in reversed(walk)]
        if s.caller:
            frames.append(resolved[(s.pid, s.caller - 1)])
        frames.append(s.function)
        key = ";".join(f.replace(";", ":") for f in frames)
        nbytes[key] = nbytes.get(key, 0) + s.bytes
        count[key] = count.get(key, 0) + s.count
    return (
        {k: v for k, v in nbytes.items() if v > 0},
        {k: v for k, v in count.items() if v > 0},
    )
