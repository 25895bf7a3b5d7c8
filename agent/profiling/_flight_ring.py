"""The flight recorder's ring: whole seconds of samples, per process, bounded twice.

Owned here (pure: no process is started, no file read): the seconds a recording
delivers from its two sources, merged; which seconds are complete; the bounds; and
the answers to "what happened in ``[from, to)``" (one folded profile, or one per
process group for a continuous-profile sink).

Sources. The sampler (bpftrace, every process of the pod) delivers each wall-clock
second once, just after it ends. Python processes are also sampled by py-spy (whole
Python stacks), one run per second per process: a run announces the second it covers
(:meth:`Ring.expect`) when it starts and delivers it (:meth:`Ring.add_python`) when it
ends. A second is *complete*, and moves from ``pending`` into the ring, once the
sampler has delivered it and no py-spy run for it is outstanding (or
``LATE_AFTER_S`` has passed since it ended: a stuck run does not hold the ring back;
the sampler itself is waited for up to ``SAMPLER_LATE_AFTER_S``).
For a process py-spy delivered a second of, its Python stacks replace the sampler's
(interpreter frames) for that second; when a run fails, the sampler's stay.
Seconds are committed in order, so "every second before :attr:`Ring.complete_until`
is final" holds: what a query or a sink read of them never changes.

Memory. Each second the sampler delivers also carries the resident size (RSS) of
every recorded process, read from /proc/PID/statm when the second is handled (one
small read per process; ``RSS_ENTRY_BYTES`` each in the size bound), so a query of
``[from, to)`` also answers how each process's memory moved (:meth:`Ring.rss`,
:func:`rss_trends`): "memory grew between 10:02 and 10:05" lines up with the stacks
of the same seconds.

Bounds. Buckets older than ``retain_s`` (counted back from the newest complete
second) are dropped, and so are the oldest while the ring's size exceeds
``max_bytes``. The size is the folded text the buckets hold (each stack's bytes +
``ENTRY_OVERHEAD`` per entry), an upper bound of what they take, since stack strings
are shared between buckets. One second bigger than ``max_bytes`` on its own (a busy
pod and a small bound) is *trimmed*, not dropped: its heaviest stacks that fit are
kept and the rest are counted under one ``[trimmed: ...]`` frame, so the ring always
holds the newest second, its sample total stays right, and the bound holds.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

ENTRY_OVERHEAD = 16
RSS_ENTRY_BYTES = 16
"""What one process's RSS in one bucket counts against ``max_bytes``."""
LATE_AFTER_S = 4.0
"""A py-spy run still outstanding this long after its second ended is given up on."""
SAMPLER_LATE_AFTER_S = 30.0
"""A second the sampler has not delivered this long after it ended is committed without
it. The sampler is the pod's one source of native stacks and delivers every second in
order, so a late second is waited for: on a loaded node one that meets a large library's
symbols first can arrive seconds late, and giving up on it at ``LATE_AFTER_S`` dropped
every native stack of those seconds (seen under a load average of 15 on 2 cores). The
bound only matters when bpftrace is stalled."""
TRIMMED_PID = 0
TRIMMED_FRAME = "[trimmed: stacks beyond the ring's size bound]"

GroupBy = Literal["group", "pid"]


@dataclass(frozen=True, slots=True)
class ProcessMeta:
    """What a process is (its program since its last exec): its group's key."""

    comm: str
    container: str | None
    runtime: str | None


@dataclass
class Bucket:
    start: int  # the wall-clock second it covers: [start, start + 1)
    stacks: dict[int, dict[str, int]]  # pid -> folded stack (root first) -> samples
    size: int
    rss: dict[int, int] = field(default_factory=dict)  # pid -> resident bytes


@dataclass
class _Pending:
    sampler: dict[int, dict[str, int]] | None = None  # None: not delivered yet
    rss: dict[int, int] = field(default_factory=dict)
    python: dict[int, dict[str, int]] = field(default_factory=dict)
    outstanding: set[int] = field(default_factory=set)  # pids of py-spy runs not back yet


@dataclass(frozen=True, slots=True)
class ProcessGroup:
    """A continuous-profile sink's unit: a container's processes of one runtime, or
    (``by="pid"``) one process. ``container``/``runtime`` are None when the process
    was gone before it could be read; ``pid`` is set only when grouped by pid."""

    container: str | None
    runtime: str | None
    pid: int | None = None


@dataclass(frozen=True, slots=True)
class GroupSamples:
    """One process group's samples over one interval (see :meth:`Ring.groups`)."""

    group: ProcessGroup
    pids: tuple[int, ...]
    comms: tuple[str, ...]
    start: float
    """Unix seconds: the first second the interval covers (clipped to what is retained)."""
    duration_s: float
    """Whole seconds from ``start``; ``start + duration_s`` <= ``complete_until``."""
    frequency_hz: int
    stacks: dict[str, int]
    """Folded stacks, root first (the process's comm), symbolized: samples per stack."""


@dataclass(frozen=True, slots=True)
class RssTrend:
    """One process's resident memory over an interval (from the seconds that have it)."""

    pid: int
    comm: str
    first_at: int
    last_at: int
    first_bytes: int
    last_bytes: int
    min_bytes: int
    max_bytes: int

    @property
    def growth_bytes(self) -> int:
        return self.last_bytes - self.first_bytes

    @property
    def mib_per_min(self) -> float:
        """The growth from the first to the last second, per minute (0 for one second)."""
        span = self.last_at - self.first_at
        return 0.0 if span <= 0 else self.growth_bytes / (1 << 20) / span * 60.0


def rss_trends(
    series: dict[int, list[tuple[int, int]]], meta: dict[int, ProcessMeta]
) -> list[RssTrend]:
    """Per process: first, last, min and max RSS of its ``(second, bytes)`` series,
    biggest growth first."""
    out = []
    for pid, points in series.items():
        if not points:
            continue
        values = [b for _, b in points]
        m = meta.get(pid)
        out.append(
            RssTrend(
                pid=pid,
                comm=m.comm if m else "",
                first_at=points[0][0],
                last_at=points[-1][0],
                first_bytes=values[0],
                last_bytes=values[-1],
                min_bytes=min(values),
                max_bytes=max(values),
            )
        )
    return sorted(out, key=lambda t: (-t.growth_bytes, t.pid))


@dataclass(frozen=True, slots=True)
class Slice:
    """The part of an asked interval the ring holds (whole seconds)."""

    stacks: dict[str, int]
    start: float
    end: float
    asked_start: float
    asked_end: float
    window_start: float
    window_end: float
    rss: tuple[RssTrend, ...] = ()
    """Each recorded process's resident memory over the same seconds."""
    pids: tuple[int, ...] = ()
    """The processes sampled in it (for what only they can tell: Go's file:line)."""

    @property
    def clipped(self) -> bool:
        """True when part of the asked interval is not retained (before or after)."""
        return self.start > math.floor(self.asked_start) or self.end < math.ceil(self.asked_end)


def merge(buckets: Iterable[Bucket]) -> dict[str, int]:
    """The folded stacks of ``buckets``, every process's merged (up to 86,400 buckets for
    a day: CPU-bound, see :meth:`Ring.buckets_in`)."""
    out: dict[str, int] = {}
    for b in buckets:
        for per in b.stacks.values():
            for k, n in per.items():
                out[k] = out.get(k, 0) + n
    return out


def stacks_size(stacks: dict[int, dict[str, int]]) -> int:
    return sum(len(k.encode()) + ENTRY_OVERHEAD for per in stacks.values() for k in per)


def trim(
    stacks: dict[int, dict[str, int]], max_bytes: int
) -> tuple[dict[int, dict[str, int]], int]:
    """``stacks`` cut to fit ``max_bytes``: the heaviest stacks that fit, the rest
    counted under one ``TRIMMED_FRAME`` stack. Returns them and how many samples the
    trimmed frame holds (0: nothing was cut)."""
    if stacks_size(stacks) <= max_bytes:
        return stacks, 0
    budget = max_bytes - (len(TRIMMED_FRAME.encode()) + ENTRY_OVERHEAD)
    entries = sorted(
        ((n, pid, k) for pid, per in stacks.items() for k, n in per.items()),
        key=lambda e: (-e[0], e[1], e[2]),
    )
    kept: dict[int, dict[str, int]] = {}
    cut = 0
    for n, pid, k in entries:
        cost = len(k.encode()) + ENTRY_OVERHEAD
        if cost <= budget:
            kept.setdefault(pid, {})[k] = n
            budget -= cost
        else:
            cut += n
    if cut:
        kept[TRIMMED_PID] = {TRIMMED_FRAME: cut}
    return kept, cut


class Ring:
    """The retained seconds of one recording (see the module docstring)."""

    def __init__(self, *, retain_s: float, max_bytes: int, frequency_hz: int) -> None:
        self.retain_s = retain_s
        self.max_bytes = max_bytes
        self.frequency_hz = frequency_hz
        self.buckets: deque[Bucket] = deque()
        self.pending: dict[int, _Pending] = {}
        self.meta: dict[int, ProcessMeta] = {}
        self.size = 0
        self.samples = 0
        self.evicted = 0
        self.trimmed_samples = 0
        self.late_samples = 0
        self.sampled_until: int | None = None  # the sampler delivered every second < this
        self.complete_until: int | None = None  # every second < this is final
        self._strings: dict[str, str] = {}  # one copy of each stack text for every bucket

    # --- what the sources deliver ---------------------------------------------------
    def add_sampler(
        self,
        second: int,
        stacks: dict[int, dict[str, int]],
        rss: dict[int, int] | None = None,
    ) -> None:
        """The sampler's (bpftrace's) stacks of ``second``, per pid, and the recorded
        processes' RSS read when it was handled."""
        if self.complete_until is not None and second < self.complete_until:
            self.late_samples += sum(n for per in stacks.values() for n in per.values())
            return
        p = self.pending.setdefault(second, _Pending())
        if rss:
            p.rss.update(rss)
        if p.sampler is None:
            p.sampler = {}
        for pid, per in stacks.items():
            mine = p.sampler.setdefault(pid, {})
            for k, n in per.items():
                mine[k] = mine.get(k, 0) + n
        self.sampled_until = max(self.sampled_until or 0, second + 1)

    def expect(self, second: int, pid: int) -> bool:
        """A py-spy run of ``pid`` covering ``second`` has started. False (and nothing
        is waited for) when that second is already complete."""
        if self.complete_until is not None and second < self.complete_until:
            return False
        self.pending.setdefault(second, _Pending()).outstanding.add(pid)
        return True

    def add_python(self, second: int, pid: int, stacks: dict[str, int] | None) -> None:
        """What the py-spy run of ``pid`` for ``second`` gave: its stacks, or None when
        it failed (the sampler's stacks of that process are kept then)."""
        p = self.pending.get(second)
        if p is None or pid not in p.outstanding:
            if stacks:
                self.late_samples += sum(stacks.values())
            return
        p.outstanding.discard(pid)
        if stacks is not None:
            p.python[pid] = stacks

    def describe(self, pid: int, meta: ProcessMeta) -> None:
        """What ``pid`` is now: on first sight, and again when it exec'd another program.
        A container's first process is often first seen as ``runc:[2:INIT]``, before it
        execs the app (on a loaded node for a while): kept, every interval of the app
        was named runc's (seen in a Pyroscope push). Its seconds before the exec are
        then counted as the app's: a few samples of runc's, against all the app's."""
        self.meta[pid] = meta

    # --- completing seconds -----------------------------------------------------------
    def commit(self, now: float) -> int:
        """Move every complete second into the ring, in order; the number moved."""
        moved = 0
        for second in sorted(self.pending):
            p = self.pending[second]
            if self.sampled_until is None or second >= self.sampled_until:
                if now < second + 1 + SAMPLER_LATE_AFTER_S:
                    break
            elif p.outstanding and now < second + 1 + LATE_AFTER_S:
                break
            del self.pending[second]
            self._append(second, self._merge(p), p.rss)
            moved += 1
        return moved

    def _merge(self, p: _Pending) -> dict[int, dict[str, int]]:
        merged = {pid: per for pid, per in (p.sampler or {}).items() if pid not in p.python}
        for pid, per in p.python.items():
            if per:
                merged[pid] = per
        return {pid: per for pid, per in merged.items() if per}

    def _append(
        self, second: int, stacks: dict[int, dict[str, int]], rss: dict[int, int] | None = None
    ) -> None:
        rss = rss or {}
        if len(rss) * RSS_ENTRY_BYTES > self.max_bytes // 4:
            # A tiny bound and many processes: the biggest keep their RSS, stacks come first.
            keep = max(0, self.max_bytes // 4 // RSS_ENTRY_BYTES)
            rss = dict(sorted(rss.items(), key=lambda kv: (-kv[1], kv[0]))[:keep])
        rss_size = len(rss) * RSS_ENTRY_BYTES
        stacks, cut = trim(stacks, max(0, self.max_bytes - rss_size))
        self.trimmed_samples += cut
        interned = {
            pid: {self._strings.setdefault(k, k): n for k, n in per.items()}
            for pid, per in stacks.items()
        }
        bucket = Bucket(
            start=second, stacks=interned, size=stacks_size(interned) + rss_size, rss=dict(rss)
        )
        self.buckets.append(bucket)
        self.size += bucket.size
        self.samples += sum(n for per in interned.values() for n in per.values())
        self.complete_until = max(self.complete_until or 0, second + 1)
        horizon = self.complete_until - self.retain_s
        while self.buckets and (
            self.buckets[0].start + 1 <= horizon
            or (self.size > self.max_bytes and len(self.buckets) > 1)
        ):
            old = self.buckets.popleft()
            self.size -= old.size
            self.evicted += 1
        entries = sum(len(per) for b in self.buckets for per in b.stacks.values())
        if len(self._strings) > 4 * entries + 1024:
            # Drop texts no bucket uses any more, and processes no bucket holds: neither
            # table may outgrow the ring.
            live = {k for b in self.buckets for per in b.stacks.values() for k in per}
            self._strings = {k: k for k in live}
            pids = {pid for b in self.buckets for pid in (*b.stacks, *b.rss)}
            self.meta = {pid: m for pid, m in self.meta.items() if pid in pids}

    # --- reading --------------------------------------------------------------------
    def frozen(self) -> Ring:
        """A copy to read in a worker thread while this ring moves on (the loop appends
        each second and evicts the oldest): the deque of buckets and the process names
        copied, at C speed (about a millisecond for a day of buckets); the buckets
        themselves are shared, since one never changes once appended."""
        other = copy.copy(self)
        other.buckets = deque(self.buckets)
        other.meta = dict(self.meta)
        other.pending = {}
        return other

    def window(self) -> tuple[float, float] | None:
        """``[start, end)`` of the retained seconds (Unix seconds), None before the first."""
        if not self.buckets or self.complete_until is None:
            return None
        return float(self.buckets[0].start), float(self.complete_until)

    def lag_s(self, now: float) -> float | None:
        """How far behind real time the newest complete second is."""
        return None if self.complete_until is None else max(0.0, now - self.complete_until)

    def clip(self, start: float, end: float) -> tuple[int, int] | None:
        """The whole seconds of ``[start, end)`` the ring holds; None if none."""
        w = self.window()
        if w is None:
            return None
        lo, hi = max(math.floor(start), int(w[0])), min(math.ceil(end), int(w[1]))
        return (lo, hi) if lo < hi else None

    def _buckets(self, lo: int, hi: int) -> Iterable[Bucket]:
        return (b for b in self.buckets if lo <= b.start < hi)

    def buckets_in(self, lo: int, hi: int) -> list[Bucket]:
        """The buckets of ``[lo, hi)``, in a list of the caller's own: :func:`merge` may
        read it in a worker thread while the ring moves on (a bucket never changes once
        appended; only the deque holding them does)."""
        return list(self._buckets(lo, hi))

    def folded(self, lo: int, hi: int) -> dict[str, int]:
        return merge(self._buckets(lo, hi))

    def pids(self, lo: int, hi: int) -> tuple[int, ...]:
        """The processes with samples in ``[lo, hi)``."""
        return tuple(sorted({p for b in self._buckets(lo, hi) for p in b.stacks} - {TRIMMED_PID}))

    def rss(self, lo: int, hi: int) -> dict[int, list[tuple[int, int]]]:
        """Each process's ``(second, resident bytes)`` over ``[lo, hi)``, in order."""
        out: dict[int, list[tuple[int, int]]] = {}
        for b in self._buckets(lo, hi):
            for pid, n in b.rss.items():
                out.setdefault(pid, []).append((b.start, n))
        return out

    def latest_rss(self) -> dict[int, int]:
        """The newest bucket's RSS per process."""
        return dict(self.buckets[-1].rss) if self.buckets else {}

    def groups(self, lo: int, hi: int, *, by: GroupBy) -> list[GroupSamples]:
        acc: dict[ProcessGroup, tuple[set[int], set[str], dict[str, int]]] = {}
        for b in self._buckets(lo, hi):
            for pid, per in b.stacks.items():
                m = self.meta.get(pid)
                if pid == TRIMMED_PID:
                    m = ProcessMeta(comm="[trimmed]", container=None, runtime=None)
                elif m is None:
                    m = ProcessMeta(comm="", container=None, runtime=None)
                key = ProcessGroup(
                    container=m.container, runtime=m.runtime, pid=pid if by == "pid" else None
                )
                pids, comms, out = acc.setdefault(key, (set(), set(), {}))
                pids.add(pid)
                if m.comm:
                    comms.add(m.comm)
                for k, n in per.items():
                    out[k] = out.get(k, 0) + n
        return [
            GroupSamples(
                group=g,
                pids=tuple(sorted(pids)),
                comms=tuple(sorted(comms)),
                start=float(lo),
                duration_s=float(hi - lo),
                frequency_hz=self.frequency_hz,
                stacks=stacks,
            )
            for g, (pids, comms, stacks) in sorted(
                acc.items(),
                key=lambda kv: (kv[0].container or "", kv[0].runtime or "", kv[0].pid or 0),
            )
        ]
