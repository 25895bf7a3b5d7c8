"""Reading a session's CTF trace: babeltrace2 text, NDJSON, event counts, tar.gz.

Text is babeltrace2's own pretty format, streamed as it comes. NDJSON comes from
the native sink ``sink.tracecar.ndjson`` (:mod:`._native`) when it could be
built; otherwise it is
babeltrace2's text asked for in a regular shape (``--names=all
--clock-seconds --no-delta -f loglevel``: every line a list of ``key = value``)
and rewritten into JSON a chunk at a time with a few regular-expression passes
that run in C (:func:`to_ndjson`), so the conversion keeps up with babeltrace2
itself. Chunks holding anything beyond the plain grammar (hex/octal integers,
arrays, enumerations, NaN, escapes JSON lacks) go through a real parser
(:func:`parse_line`) line by line instead; a line even that cannot read is
still emitted, with its raw text.

Paging: ``offset``/``limit`` count events (lines); ``begin_ns``/``end_ns`` are
handed to babeltrace2's own ``--begin``/``--end``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

from agent import _proc
from agent.lttng._model import Format

CHUNK = 1 << 20
READ_TIMEOUT_S = 600.0

# --- babeltrace2 command lines ---------------------------------------------------------


def _time(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def babeltrace_argv(
    trace: Path,
    *,
    fmt: Format,
    begin_ns: int | None = None,
    end_ns: int | None = None,
    plugin_dir: Path | None = None,
) -> list[str]:
    """babeltrace2 writing text, the regular text the converter reads, or NDJSON itself."""
    if fmt == "json" and plugin_dir is not None:
        argv = ["babeltrace2", f"--plugin-path={plugin_dir}", str(trace)]
        argv += ["-c", "sink.tracecar.ndjson"]
    else:
        argv = ["babeltrace2", str(trace)]
    if fmt == "json" and plugin_dir is None:
        argv += ["--names=all", "--clock-seconds", "--no-delta", "--fields=loglevel"]
    if begin_ns is not None:
        argv.append(f"--begin={_time(begin_ns)}")
    if end_ns is not None:
        argv.append(f"--end={_time(end_ns)}")
    return argv


# --- text -> JSON: the fast path -----------------------------------------------------

# The dot of each line's timestamp (seconds, then 9 digits of nanoseconds, then the
# loglevel): deleting it turns the seconds into integer nanoseconds. A literal
# template: re.sub runs it in C (templates with group references call Python
# code per match in 3.11).
_TS_DOT = re.compile(r'\.(?=[0-9]{9}, "loglevel": )')
_STR = re.compile(r'("[^"\\\n]*(?:\\.[^"\\\n]*)*")')
# Inside strings: escapes JSON does not have (\a, \v, \x01, ...). Conservative.
_BAD_ESCAPE = re.compile(r'\\[^"\\/bfnrt]')
# Outside strings, after quoting keys: a value JSON would not take as it is
# (hex, octal or binary integers, nan, inf, bare words).
_ODD_VALUE = re.compile(r'": (?:[-+]?0[0-9xXbB]|[^-0-9{\x00"])')
_SCOPES = (
    ('"stream.event.context": ', '"context": '),
    ('"event.fields": ', '"fields": '),
)


# A string value holding a sequence the passes below rewrite (or an escaped quote,
# which would hide where it ends): such chunks cut their strings out first.
_COMPOUND = re.compile(r"= [\[(<]")
_LOUD_STR = re.compile(r'= "[^"\n]*?(?:, |= |\{ | \()')


def _skeleton_to_json(sk: str) -> str | None:
    """Rewrite a chunk whose strings cannot be mistaken for syntax (see :func:`_fast`).

    Only ``str.replace`` and regex passes with literal templates (C speed); each
    header rewrite must have happened once per line, else the chunk is not in the
    shape assumed and the careful parser takes it.
    """
    if "{ }" in sk or _COMPOUND.search(sk):
        return None  # arrays, enumerations, unknown values, empty structs
    lines = sk.count("\n")
    # Leading newline: every header then starts with the same literal.
    sk = "\n" + sk.replace(" = ", '": ').replace("{ ", '{ "').replace(", ", ', "')
    # timestamp": S.N, "loglevel": L (V), "name": E, "stream.packet.context": {
    #   -> {"timestamp_ns": SN, "loglevel": "L", "loglevel_value": V, "name": "E",
    #      "packet_context": {
    sk, n_ts = _TS_DOT.subn("", sk)
    for old, new in (
        ('\ntimestamp": ', '\n{"timestamp_ns": '),
        (', "loglevel": ', ', "loglevel": "'),
        (" (", '", "loglevel_value": '),
        ('), "name": ', ', "name": "'),
        (', "stream.packet.context": ', '", "packet_context": '),
    ):
        if sk.count(old) != lines:
            return None
        sk = sk.replace(old, new)
    if n_ts != lines or _ODD_VALUE.search(sk):
        return None
    for old, new in _SCOPES:
        sk = sk.replace(old, new)
    return sk[1:].replace("\n", "}\n")


def _fast(chunk: str) -> str | None:
    """The chunk as NDJSON by whole-chunk passes, or None if it is not in the plain grammar.

    The passes rely on ``{ ``, ``, `` and `` = `` being syntax: keys follow ``{ ``
    or ``, `` and precede `` = ``. When no string value holds one of them (the
    usual case) the chunk is rewritten as it is; otherwise its strings are cut out
    first (replaced by \\x00) and put back afterwards.
    """
    if "\x00" in chunk or _BAD_ESCAPE.search(chunk):
        return None
    if '\\"' not in chunk and _LOUD_STR.search(chunk) is None:
        return _skeleton_to_json(chunk)
    parts = _STR.split(chunk)
    strings = parts[1::2]
    sk = "\x00".join(parts[0::2])
    if "\\" in sk:
        return None  # a backslash outside strings: not babeltrace2's plain grammar
    out = _skeleton_to_json(sk)
    if out is None:
        return None
    pieces = out.split("\x00")
    joined = list(chain.from_iterable(zip(pieces, strings, strict=False)))
    joined.append(pieces[-1])
    return "".join(joined)


def to_ndjson(chunk: str) -> str:
    """Whole lines of babeltrace2's regular text -> the same events as NDJSON."""
    fast = _fast(chunk)
    if fast is not None:
        return fast
    return "".join(json.dumps(parse_line(ln)) + "\n" for ln in chunk.splitlines() if ln)


# --- text -> JSON: the careful path ---------------------------------------------------

_TOKEN = re.compile(
    r'\s*(?:("(?:[^"\\]|\\.)*")|([-+]?(?:0[xX][0-9a-fA-F]+|0[bB][01]+|[0-9][0-9.eE+\-]*|nan|inf))'
    r"|([A-Za-z_<][A-Za-z0-9_.:<>\-]*)|([{}\[\](),=:]))"
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|.)")


def _unescape(lit: str) -> str:
    def one(m: re.Match[str]) -> str:
        e = m.group(1)
        if e.startswith("x") and len(e) == 3:
            return chr(int(e[1:], 16))
        return _ESCAPES.get(e, e)

    return _ESCAPE.sub(one, lit[1:-1])


def _number(tok: str) -> Any:
    t = tok.lower().lstrip("+")
    neg = t.startswith("-")
    body = t.lstrip("-")
    if body in ("nan", "inf"):
        return tok  # not representable in JSON: keep the text
    try:
        if body.startswith("0x"):
            v: Any = int(body, 16)
        elif body.startswith("0b"):
            v = int(body, 2)
        elif len(body) > 1 and body.startswith("0") and body.isdigit():
            v = int(body, 8)
        elif body.isdigit():
            v = int(body)
        else:
            v = float(body)
    except ValueError:
        return tok
    return -v if neg else v


class _Parser:
    def __init__(self, line: str) -> None:
        self.toks: list[tuple[str, str]] = []
        pos = 0
        line = line.rstrip()
        while pos < len(line):
            m = _TOKEN.match(line, pos)
            if m is None or m.end() == pos:
                raise ValueError(f"unexpected text at {pos}")
            pos = m.end()
            kind = ("str", "num", "id", "p")[m.lastindex - 1 if m.lastindex else 0]
            self.toks.append((kind, m.group(m.lastindex or 0)))
        self.i = 0

    def peek(self) -> tuple[str, str]:
        return self.toks[self.i] if self.i < len(self.toks) else ("eof", "")

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if value is not None and tok[1] != value:
            raise ValueError(f"expected {value!r}, got {tok[1]!r}")
        self.i += 1
        return tok

    def fields(self, end: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while self.peek()[1] != end and self.peek()[0] != "eof":
            key = self.take()[1]
            self.take("=")
            out[key] = self.value()
            if self.peek()[1] == ",":
                self.take()
        return out

    def value(self) -> Any:
        kind, tok = self.peek()
        if tok == "{":
            self.take()
            d = self.fields("}")
            self.take("}")
            return d
        if tok == "[":
            self.take()
            items: list[Any] = []
            while self.peek()[1] == "[":
                self.take("[")
                self.take()
                self.take("]")
                self.take("=")
                items.append(self.value())
                if self.peek()[1] == ",":
                    self.take()
            self.take("]")
            return items
        if tok == "(":  # enumeration: ( "LABEL" : container = 3 ) or ( { "A", "B" } : ...)
            self.take()
            labels: list[str] = []
            while self.peek()[1] != ":":
                k, t = self.take()
                if k == "str":
                    labels.append(_unescape(t))
                elif k == "id":
                    labels.append(t)
            self.take(":")
            self.take()  # "container"
            self.take("=")
            v = self.value()
            self.take(")")
            return {"labels": labels, "value": v}
        self.take()
        if kind == "id" and self.peek()[1] == "(":  # a log level: TRACE_INFO (6)
            self.take("(")
            self.take()
            self.take(")")
        if kind == "str":
            return _unescape(tok)
        if kind == "num":
            return _number(tok)
        return tok


_SCOPE_NAMES = {
    "stream.packet.context": "packet_context",
    **{old.strip('": '): new.strip('": ') for old, new in _SCOPES},
}


def parse_line(line: str) -> dict[str, Any]:
    """One line of babeltrace2's regular text -> a JSON-able event (never raises)."""
    try:
        p = _Parser(line)
        raw = p.fields("")
    except (ValueError, IndexError, TypeError) as e:
        return {"raw": line, "parse_error": str(e)}
    ev: dict[str, Any] = {}
    ts = raw.pop("timestamp", None)
    ts_text = line.split(",", 1)[0].removeprefix("timestamp = ")
    if isinstance(ts, int | float) and "." in ts_text:
        sec, _, frac = ts_text.partition(".")
        ev["timestamp_ns"] = int(sec) * 1_000_000_000 + int(frac.ljust(9, "0")[:9])
    level = raw.pop("loglevel", None)
    if level is not None:
        ev["loglevel"] = level
        m = re.search(r"loglevel = [A-Z0-9_]+ \(([0-9]+)\)", line)
        if m:
            ev["loglevel_value"] = int(m.group(1))
    for key, value in raw.items():
        ev[_SCOPE_NAMES.get(key, key)] = value
    return ev


# --- streaming -------------------------------------------------------------------------


def _skip_lines(data: bytes, n: int) -> tuple[bytes, int]:
    """Drop up to ``n`` whole lines from ``data``; return the rest and how many were dropped."""
    total = data.count(b"\n")
    if total <= n:
        return b"", total
    pos = 0
    for _ in range(n):
        pos = data.index(b"\n", pos) + 1
    return data[pos:], n


def _head_lines(data: bytes, n: int) -> tuple[bytes, int]:
    """The first ``n`` whole lines of ``data`` (all of them if fewer) and how many."""
    total = data.count(b"\n")
    if total <= n:
        return data, total
    pos = 0
    for _ in range(n):
        pos = data.index(b"\n", pos) + 1
    return data[:pos], n


async def stream_events(
    trace: Path,
    *,
    fmt: Format,
    offset: int = 0,
    limit: int | None = None,
    begin_ns: int | None = None,
    end_ns: int | None = None,
    plugin_dir: Path | None = None,
) -> AsyncIterator[bytes]:
    """babeltrace2's events of ``trace`` as text or NDJSON, ``offset``/``limit`` in events.

    Text, and NDJSON from the native sink (``plugin_dir``), pass through as bytes
    (only cut at line ends for paging); otherwise NDJSON is converted here a
    whole-lines chunk at a time.
    """
    argv = babeltrace_argv(trace, fmt=fmt, begin_ns=begin_ns, end_ns=end_ns, plugin_dir=plugin_dir)
    convert = fmt == "json" and plugin_dir is None
    child = await _proc.Child.start(argv, limit=CHUNK)
    assert child.proc.stdout is not None
    errors = asyncio.ensure_future(_proc.drain_tail(child.proc.stderr, keep=8192))
    to_skip = offset
    left = limit
    pending = b""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READ_TIMEOUT_S
    failure: str | None = None
    try:
        stdout = child.proc.stdout
        while left is None or left > 0:
            try:
                data = await asyncio.wait_for(stdout.read(CHUNK), max(0.1, deadline - loop.time()))
            except TimeoutError:
                failure = f"babeltrace2 did not finish reading within {READ_TIMEOUT_S:g} s"
                break
            if not data:
                try:
                    rc = await child.wait(timeout=10)
                except TimeoutError:
                    rc = -1  # stdout closed but still running: stopped below, reported here
                if rc != 0:
                    stderr = (await errors).decode("utf-8", "replace")
                    failure = f"babeltrace2 failed: {_proc.tool_message(stderr, rc)}"
                break
            if pending:
                data = pending + data
            cut = data.rfind(b"\n") + 1
            data, pending = data[:cut], data[cut:]
            if to_skip:
                data, dropped = _skip_lines(data, to_skip)
                to_skip -= dropped
            if left is not None:
                data, kept = _head_lines(data, left)
                left -= kept
            if not data:
                continue
            if convert:
                yield to_ndjson(data.decode("utf-8", "replace")).encode()
            else:
                yield data
        if failure is not None:
            # The 200 and earlier events are already sent: the failure travels in-band,
            # as the last record, so a reader never mistakes a cut-off stream for the end.
            yield failure_record(failure, fmt=fmt)
    finally:
        # Limit reached, client gone or done: babeltrace2 goes either way.
        await child.stop(grace=0.5)
        errors.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await errors


def failure_record(message: str, *, fmt: Format) -> bytes:
    """The in-band last record of an events stream that failed part-way."""
    if fmt == "json":
        return json.dumps({"error": message}).encode() + b"\n"
    return b"# error: " + message.replace("\n", " | ").encode() + b"\n"


async def count_events(trace: Path, *, timeout: float = 120.0) -> int:
    """Events in the trace, counted by babeltrace2's counter sink (no formatting)."""
    done = await _proc.run(
        ["babeltrace2", str(trace), "-c", "sink.utils.counter", "-p", "step=+0"],
        timeout=timeout,
    )
    m = re.search(r"^\s*([0-9]+) Event messages?$", done.text, re.M)
    return int(m.group(1)) if m else 0


def write_tar(trace: Path, dest: Path, *, arcname: str) -> None:
    """The CTF trace directory as a tar.gz (Trace Compass and babeltrace2 open it)."""
    import tarfile  # on first use: not part of the idle agent's memory

    with tarfile.open(dest, "w:gz", compresslevel=6) as tar:
        tar.add(trace, arcname=arcname)


def has_trace(paths: Sequence[Path]) -> bool:
    """True when any CTF metadata file exists below the paths."""
    for p in paths:
        with contextlib.suppress(OSError):
            if any(p.rglob("metadata")):
                return True
    return False
