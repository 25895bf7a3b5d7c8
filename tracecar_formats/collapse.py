"""Collapse ``perf script`` text into folded stacks, exactly as FlameGraph's
``stackcollapse-perf.pl`` does (same frames, same counts, same output bytes).

This module owns the folded-stack format: :class:`Collapser` (incremental, fed
chunks while ``perf script`` streams), :func:`collapse_text`, :func:`format_folded`
and :func:`parse_folded`. It is pure: no processes, no files.

Semantics mirrored from ``stackcollapse-perf.pl`` (checked against FlameGraph's
own regression corpus for every option):

* a sample is an event line followed by frame lines and ended by an empty line;
  a sample not followed by an empty line is never counted;
* only samples of the first event type seen are kept (when the event is printed
  after a time stamp, which is what the script's pattern needs);
* a sample weighs the period printed on its event line, else 1;
* frames: offsets ``+0x..`` stripped, ``[unknown]`` replaced by ``[dso]``,
  inlined chains ``a->b`` split with ``_[i]``, names tidied (``;`` -> ``:``,
  argument lists cut except Go methods and ``(anonymous namespace)``, quotes
  dropped, Java ``L`` prefixes), annotations ``_[k]`` / ``_[j]`` on request;
* output sorted bytewise, ``stack count`` per line.

Symbols (optional, :class:`StackSymbolizer`): post-processing may hand the collapser
a symbolizer (agent.symbolize's) that names frames perf could not (stripped Go from
its pclntab, with inlined calls; stripped native code from its debug file) and puts
back the caller a frameless leaf hides. Without one the output is exactly
``stackcollapse-perf.pl``'s. With one, frame lines are cached per pid (the same
address means different code in different processes) and the leaf fix-up runs on
the fast path's samples.

Speed: ``perf script`` prints the same frame lines over and over, so each
distinct frame line is transformed once (regexes, in :meth:`_FrameCache.__missing__`)
and every sample after that is a C-level ``split`` + ``join`` of cached
fragments. Samples that do not have the usual shape fall back to a line-by-line
mirror of the Perl main loop, so correctness never depends on the fast path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "CollapseOptions",
    "Collapser",
    "StackSymbolizer",
    "collapse_text",
    "format_folded",
    "parse_folded",
]


class StackSymbolizer(Protocol):
    """What the collapser asks of a symbolizer (all arguments as perf printed them:
    pid digits, hex PC without ``0x``, the symbol, the object's path)."""

    def frames(
        self, pid: bytes, pc: bytes, sym: bytes, mod: bytes, *, caller: bool
    ) -> list[bytes] | None:
        """The frames at ``pc``, outermost first, or None to keep perf's ``sym``.
        ``caller``: ``pc`` is a return address (the call is the instruction before it)."""
        ...

    def missing_caller(
        self, pid: bytes, leaf: tuple[bytes, bytes], ret: tuple[bytes, bytes]
    ) -> bytes | None:
        """The function a frameless leaf's (pc, object) hides between itself and the next
        (pc, object) of the walk, or None."""
        ...


@dataclass(frozen=True, kw_only=True, slots=True)
class CollapseOptions:
    """stackcollapse-perf.pl's ``--pid --tid --kernel --jit --all --addrs``."""

    pid: bool = False
    tid: bool = False
    kernel: bool = False
    jit: bool = False
    all: bool = False
    addrs: bool = False


# The Perl script's own patterns, as bytes (its input is bytes: \w, \s, \d are ASCII).
_EVENT_RE = re.compile(rb"^(\S.+?)\s+(\d+)/*(\d+)*\s+")
_EVENT_NAME_RE = re.compile(rb":\s*(\d+)*\s+(\S+):\s*$")
_STACK_RE = re.compile(rb"^\s*(\w+)\s*(.+) \((\S*)\)")
_OFFSET_RE = re.compile(rb"\+0x[\da-f]+$")
_GO_METHOD_RE = re.compile(rb"\.\(.*\)\.")
_ARGS_RE = re.compile(rb"\((?!anonymous namespace\)).*")
_KERNEL_MOD_RE = re.compile(rb"(^\[|vmlinux$)")
_JIT_MOD_RE = re.compile(rb"/tmp/perf-\d+\.map")
_QUOTES = b"\"'"
_MISS: tuple[bytes, int] = (b"", -1)  # sentinel (compared by identity)
_SEEN_CHECK = 4096  # first look at the block cache's hit rate after this many misses
_SEEN_MAX_BYTES = 32 << 20  # text of distinct samples remembered at most
_HEADERS_MAX = 1 << 16  # distinct event lines remembered (all distinct when timed)


def _perl_true(value: bytes | None) -> bool:
    # Perl truth of a captured string: undef, "" and "0" are false.
    return bool(value) and value != b"0"


class _FrameCache(dict[bytes, bytes]):
    """frame line -> its folded fragment (``;f`` or ``;f;g_[i]``, or b"" if skipped)."""

    __slots__ = (
        "addrs",
        "callers",
        "java",
        "jit",
        "kernel",
        "outer",
        "pid",
        "symbolizer",
        "where",
    )

    def __init__(
        self,
        *,
        java: bool,
        kernel: bool,
        jit: bool,
        addrs: bool,
        symbolizer: StackSymbolizer | None = None,
        pid: bytes = b"",
    ) -> None:
        super().__init__()
        self.java = java
        self.kernel = kernel
        self.jit = jit
        self.addrs = addrs
        self.symbolizer = symbolizer
        self.pid = pid
        # With a symbolizer: frame line -> (pc, object) of user frames, None for the
        # kernel's; and (leaf line, next line) -> the fragment of the hidden caller.
        self.where: dict[bytes, tuple[bytes, bytes] | None] = {}
        self.callers: dict[tuple[bytes, bytes], bytes] = {}
        self.outer = _OuterCache(self)

    def __missing__(self, line: bytes) -> bytes:
        frames = self.transform(line)
        fragment = b"".join(b";" + f for f in frames) if frames else b""
        self[line] = fragment
        return fragment

    def transform(self, line: bytes, *, caller: bool = False) -> list[bytes] | None:
        """The frames a stack line contributes (leaf-most last), or None if not a stack line.
        ``caller``: the line is a return address, not the sampled PC (symbolizer only)."""
        m = _STACK_RE.match(line)
        if m is None:
            return None
        pc, rawfunc, mod = m.group(1), m.group(2), m.group(3)
        rawfunc = _OFFSET_RE.sub(b"", rawfunc, count=1)
        if rawfunc.startswith(b"("):  # process names
            return []
        named: list[bytes] | None = None
        if self.symbolizer is not None:
            self.where[line] = None if b"kernel" in mod[:8] else (pc, mod)
            named = self.symbolizer.frames(self.pid, pc, rawfunc, mod, caller=caller)
        if named is not None:
            # The symbolizer's frames (inlined calls included) are plain functions.
            return [self.tidy(f, mod, annotate=True) for f in named]
        parts = rawfunc.split(b"->")
        while parts and not parts[-1]:  # Perl's split drops trailing empty fields
            parts.pop()
        inline: list[bytes] = []
        for func in parts:
            if func == b"[unknown]":
                name = mod.rpartition(b"/")[2] if mod != b"[unknown]" else b"unknown"
                func = b"[" + name + b" <" + pc + b">]" if self.addrs else b"[" + name + b"]"
            if inline:
                func = self.tidy(func, mod, annotate=False)
                if b"_[i]" not in func:
                    func += b"_[i]"
            else:
                func = self.tidy(func, mod, annotate=True)
            inline.append(func)
        return inline

    def tidy(self, func: bytes, mod: bytes, *, annotate: bool) -> bytes:
        """A function name as stackcollapse-perf writes it."""
        func = func.replace(b";", b":")
        if _GO_METHOD_RE.search(func) is None:
            func = _ARGS_RE.sub(b"", func, count=1)
        func = func.translate(None, _QUOTES)
        if self.java and func.startswith(b"L") and b"/" in func:
            func = func[1:]
        if not annotate:
            return func
        if self.kernel and _KERNEL_MOD_RE.search(mod) and b"unknown" not in mod:
            func += b"_[k]"
        elif self.jit and _JIT_MOD_RE.search(mod) and b"_[j]" not in func:
            func += b"_[j]"
        return func

    def joined(self, lines: list[bytes]) -> bytes:
        """The fragments of a sample's frame lines (outermost first), with the caller a
        frameless leaf hides put back (symbolizer only)."""
        where = self.where
        # From the leaf end: the kernel's frames, then the first user frame (the sampled
        # PC). Every line above it is a return address, looked up in ``outer`` only (a
        # deep Go stack would otherwise be transformed and hashed twice per sample).
        i = len(lines) - 1
        while i >= 0:
            self[lines[i]]  # fills ``where`` (and caches the fragment)
            if where.get(lines[i], 0) is not None:
                break
            i -= 1  # one of the kernel's frames
        if i < 1:
            return b"".join(map(self.__getitem__, lines))
        # Frames above the first user frame are return addresses: named by the call
        # before them (an inlined call ends there, not where it returns to).
        frags = list(map(self.outer.__getitem__, lines[:i]))
        frags.extend(map(self.__getitem__, lines[i:]))
        leaf, ret = where.get(lines[i]), where.get(lines[i - 1])
        if leaf is not None and ret is not None:
            pair = (lines[i], lines[i - 1])
            extra = self.callers.get(pair)
            if extra is None:
                assert self.symbolizer is not None
                name = self.symbolizer.missing_caller(self.pid, leaf, ret)
                extra = b"" if name is None else b";" + self.tidy(name, ret[1], annotate=True)
                self.callers[pair] = extra
            if extra:
                frags.insert(i, extra)
        return b"".join(frags)


class _OuterCache(dict[bytes, bytes]):
    """frame line -> its fragment when the line is a return address (symbolizer only)."""

    __slots__ = ("frames",)

    def __init__(self, frames: _FrameCache) -> None:
        super().__init__()
        self.frames = frames

    def __missing__(self, line: bytes) -> bytes:
        out = self.frames.transform(line, caller=True)
        fragment = b"".join(b";" + f for f in out) if out else b""
        self[line] = fragment
        return fragment


class Collapser:
    """Incremental stackcollapse-perf: :meth:`feed` chunks of ``perf script`` stdout
    (any boundaries), then :meth:`finish` for ``{folded stack: count}``."""

    def __init__(
        self,
        options: CollapseOptions = CollapseOptions(),
        *,
        symbolizer: StackSymbolizer | None = None,
    ) -> None:
        self._options = options
        self._symbolizer = symbolizer
        self._pid_caches: dict[tuple[bytes, bool], _FrameCache] = {}
        self._kernel = options.kernel or options.all
        self._jit = options.jit or options.all
        self._caches = {
            java: _FrameCache(java=java, kernel=self._kernel, jit=self._jit, addrs=options.addrs)
            for java in (False, True)
        }
        # header line -> (pname, weight, event, pid) ; None = not an event line.
        self._headers: dict[bytes, tuple[bytes, int, bytes | None, bytes] | None] = {}
        self._event_filter: bytes | None = None
        self._stacks: dict[bytes, int] = {}
        self._tail = b""
        self._finished = False
        # whole sample text -> (folded key, weight), or None if filtered out
        self._seen_blocks: dict[bytes, tuple[bytes, int] | None] | None = {}
        self._block_misses = 0
        self._seen_bytes = 0
        self._nblocks = 0
        # Slow-path state mirrors the Perl main loop's variables.
        self._pname: bytes | None = None
        self._stack: list[bytes] = []
        self._period = 1
        self._pid = b"?"

    # -- input -----------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        if self._finished:
            raise RuntimeError("Collapser.finish() was already called")
        if not chunk:
            return
        data = self._tail + chunk if self._tail else chunk
        blocks = data.split(b"\n\n")
        self._tail = blocks.pop()  # the text after the last empty line: not complete yet
        if blocks:
            self._blocks(blocks)

    def finish(self) -> dict[str, int]:
        """The folded stacks.

        A trailing sample without its empty line is not counted (as in Perl)."""
        if not self._finished:
            self._finished = True
            self._tail = b""
        return {k.decode("utf-8", "surrogateescape"): v for k, v in self._stacks.items()}

    @property
    def frame_cache_size(self) -> int:
        return sum(len(c) for c in self._caches.values()) + sum(
            len(c) for c in self._pid_caches.values()
        )

    def _cache(self, pid: bytes, java: bool) -> _FrameCache:
        """The frame cache of one process (symbolizer only)."""
        cache = self._pid_caches.get((pid, java))
        if cache is None:
            cache = self._pid_caches[(pid, java)] = _FrameCache(
                java=java,
                kernel=self._kernel,
                jit=self._jit,
                addrs=self._options.addrs,
                symbolizer=self._symbolizer,
                pid=pid,
            )
        return cache

    # -- samples -----------------------------------------------------------------

    def _blocks(self, blocks: list[bytes]) -> None:
        stacks = self._stacks
        headers = self._headers
        caches = self._caches
        seen = self._seen_blocks
        self._nblocks += len(blocks)
        for block in blocks:
            if block.startswith(b"\n"):
                block = block.lstrip(b"\n")  # extra empty lines: no-ops in Perl
            if not block:
                continue
            # Whole samples repeat (same thread, same stack, same leaf address):
            # one hash of the block replaces the split/join below.
            if seen is not None:
                hit = seen.get(block, _MISS)
                if hit is not _MISS:
                    if hit is not None:
                        stacks[hit[0]] = stacks.get(hit[0], 0) + hit[1]
                    continue
            lines = block.split(b"\n")
            header = lines[0]
            # Fast path: event line first, every other line indented (so it can
            # only be a frame line), no comment lines.
            if header[:1] not in b" \t#" and block.count(b"\n\t") == len(lines) - 1:
                try:
                    parsed = headers[header]
                except KeyError:
                    if len(headers) >= _HEADERS_MAX:
                        headers.clear()
                    parsed = headers[header] = self._parse_event(header)
                if parsed is not None:
                    pname, weight, event, pid = parsed
                    outcome: tuple[bytes, int] | None = None
                    # Filtered samples (another event; Perl's `next if not $pname`)
                    # count nothing. Once the first event is known, a block's
                    # outcome never changes, so it can be remembered.
                    if event is not None and self._event_filter is None:
                        self._event_filter = event
                    if (event is None or event == self._event_filter) and pname != b"0":
                        lines.reverse()
                        lines.pop()  # the header
                        if self._symbolizer is None:
                            key = pname + b"".join(map(caches[pname == b"java"].__getitem__, lines))
                        else:
                            key = pname + self._cache(pid, pname == b"java").joined(lines)
                        stacks[key] = stacks.get(key, 0) + weight
                        outcome = (key, weight)
                    if seen is not None:
                        self._remember(block, outcome)
                        seen = self._seen_blocks
                    continue
            self._slow_block(block)

    def _remember(self, block: bytes, outcome: tuple[bytes, int] | None) -> None:
        seen = self._seen_blocks
        assert seen is not None
        # Text with a per-sample time stamp never repeats: stop paying for the
        # cache when nearly every block is new; bound its memory in any case.
        self._block_misses += 1
        n = self._block_misses
        if n >= _SEEN_CHECK and (n & (n - 1)) == 0 and n > 0.9 * self._nblocks:
            self._seen_blocks = None
            return
        if self._seen_bytes < _SEEN_MAX_BYTES:
            seen[block] = outcome
            self._seen_bytes += len(block)

    def _parse_event(self, line: bytes) -> tuple[bytes, int, bytes | None, bytes] | None:
        m = _EVENT_RE.match(line)
        if m is None:
            return None
        comm, pid, tid = m.group(1), m.group(2), m.group(3)
        if not _perl_true(tid):
            pid, tid = b"?", pid
        real_pid = pid
        event: bytes | None = None
        period = b""
        e = _EVENT_NAME_RE.search(line)
        if e is not None:
            period = e.group(1) or b""
            event = e.group(2)
        weight = int(period) if _perl_true(period) else 1
        if self._options.tid:
            pname = comm + b"-" + pid + b"/" + tid
        elif self._options.pid:
            pname = comm + b"-" + pid
        else:
            pname = comm
        return pname.replace(b" ", b"_"), weight, event, real_pid

    def _slow_block(self, block: bytes) -> None:
        """Line-by-line mirror of the Perl main loop for one block, then its empty line."""
        for line in block.split(b"\n"):
            if line.startswith(b"#"):
                continue
            if not line:  # cannot happen inside a block, kept for symmetry with Perl
                self._end_of_stack()
                continue
            if _EVENT_RE.match(line) is not None:
                parsed = self._parse_event(line)
                assert parsed is not None
                pname, weight, event, pid = parsed
                if event is not None:
                    if self._event_filter is None:
                        self._event_filter = event
                    elif event != self._event_filter:
                        continue
                self._pname, self._period, self._pid = pname, weight, pid
                continue
            java = self._pname == b"java"
            cache = self._caches[java] if self._symbolizer is None else self._cache(self._pid, java)
            frames = cache.transform(line)
            if frames is None or self._pname is None:
                continue  # unrecognised line, or a frame of a filtered sample
            self._stack[:0] = frames
        self._end_of_stack()

    def _end_of_stack(self) -> None:
        if _perl_true(self._pname):
            assert self._pname is not None
            key = b";".join([self._pname, *self._stack])
            self._stacks[key] = self._stacks.get(key, 0) + self._period
        self._pname = None
        self._stack = []


def collapse_text(
    text: str | bytes,
    options: CollapseOptions = CollapseOptions(),
    *,
    symbolizer: StackSymbolizer | None = None,
) -> dict[str, int]:
    """Collapse a whole ``perf script`` text at once."""
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    collapser = Collapser(options, symbolizer=symbolizer)
    collapser.feed(data)
    return collapser.finish()


def _sort_key(stack: str) -> bytes:
    return stack.encode("utf-8", "surrogateescape")


def format_folded(stacks: Mapping[str, int]) -> str:
    """``stack count`` lines sorted bytewise, as ``stackcollapse-perf.pl`` prints them."""
    return "".join(f"{k} {stacks[k]}\n" for k in sorted(stacks, key=_sort_key))


def parse_folded(text: str) -> dict[str, int]:
    """Read folded stacks (``a;b;c N`` per line); repeated stacks add up."""
    out: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not line:
            continue
        stack, sep, count = line.rpartition(" ")
        if not sep or not count.isdigit():
            raise ValueError(f"line {lineno}: expected 'frame;frame;... COUNT', got {raw[:200]!r}")
        out[stack] = out.get(stack, 0) + int(count)
    return out
