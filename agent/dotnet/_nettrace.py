"""The nettrace format (EventPipe's stream), parsed far enough to count and name
events and to read their payloads (EventCounters' values among them).

This module owns reading nettrace bytes; it is pure (no sockets, no files).

The layout, as the runtime writes it (format version 4, .NET Core 3.0 and later)
and as PerfView's TraceEvent reads it:

* ``Nettrace``, then the FastSerialization signature (``int32`` length +
  ``!FastSerialization.1``);
* objects: ``BeginObject`` (5), a type (5, ``NullReference`` 1, ``int32`` version,
  ``int32`` minimum reader version, ``int32`` name length, name, ``EndObject`` 6),
  the object's payload, ``EndObject`` (6); the stream ends with ``NullReference``;
* the ``Trace`` object: start time (SYSTEMTIME), QPC sync time and frequency,
  pointer size, pid, processors, sampling rate;
* blocks (``MetadataBlock``, ``EventBlock``, ``StackBlock``, ``SPBlock``): an
  ``int32`` size, padding to a 4-byte boundary of the stream, the block's bytes.
  Metadata and event blocks hold events with (flag 1) compressed headers: a flags
  byte says which fields differ from the previous event's in the block (varints);
  a metadata event's payload describes an event type (provider, id, name, fields).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

MAGIC = b"Nettrace"
_SIGNATURE = b"!FastSerialization.1"
_BEGIN, _END, _NULL = 5, 6, 1
_BLOCKS = frozenset({"EventBlock", "MetadataBlock", "StackBlock", "SPBlock"})

# Compressed event header flags.
_F_METADATA_ID = 0x01
_F_CAPTURE_THREAD_AND_SEQUENCE = 0x02
_F_THREAD_ID = 0x04
_F_STACK_ID = 0x08
_F_ACTIVITY_ID = 0x10
_F_RELATED_ACTIVITY_ID = 0x20
_F_DATA_LENGTH = 0x80

# EventPipe's field type codes (System.TypeCode, plus 19 for arrays).
_OBJECT, _ARRAY, _STRING = 1, 19, 18
_FIXED: dict[int, tuple[str, int]] = {
    3: ("<i", 4),  # Boolean (a 4-byte BOOL)
    4: ("<H", 2),  # Char
    5: ("<b", 1),
    6: ("<B", 1),
    7: ("<h", 2),
    8: ("<H", 2),
    9: ("<i", 4),
    10: ("<I", 4),
    11: ("<q", 8),
    12: ("<Q", 8),
    13: ("<f", 4),
    14: ("<d", 8),
    16: ("<q", 8),  # DateTime (FILETIME)
}


class NettraceError(ValueError):
    """The bytes are not a nettrace stream (or are cut where no event can end)."""


@dataclass(frozen=True, slots=True)
class FieldDef:
    name: str
    type_code: int
    fields: tuple[FieldDef, ...] = ()
    """An object's (or an array of objects') own fields."""
    element: int = 0
    """An array's element type code."""


@dataclass(frozen=True, slots=True)
class EventType:
    """One event type, as a metadata event describes it."""

    metadata_id: int
    provider: str
    event_id: int
    name: str
    keywords: int
    version: int
    level: int
    fields: tuple[FieldDef, ...]


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    timestamp: int
    thread_id: int
    stack_id: int
    payload: bytes


@dataclass
class TraceInfo:
    """The ``Trace`` object: who was traced and the clock."""

    pid: int = 0
    pointer_size: int = 8
    processors: int = 0
    qpc_sync: int = 0
    qpc_frequency: int = 1
    sampling_rate_ns: int = 0
    start: str = ""


@dataclass
class Nettrace:
    """A parsed stream: the trace's facts, the event types seen, every event."""

    info: TraceInfo = field(default_factory=TraceInfo)
    types: dict[int, EventType] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    stacks: int = 0
    complete: bool = False
    """The stream's end marker was read (else it was cut, e.g. by a process exit)."""


class _Reader:
    def __init__(self, data: bytes | memoryview, pos: int = 0, end: int | None = None) -> None:
        self.data = memoryview(data)
        self.pos = pos
        self.end = len(self.data) if end is None else end

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > self.end:
            raise NettraceError(f"cut at byte {self.pos}: {n} more bytes expected")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))[0]

    def u8(self) -> int:
        return int(self.take(1)[0])

    def i32(self) -> int:
        return int(self.unpack("<i"))

    def varint(self) -> int:
        out = shift = 0
        while True:
            b = self.u8()
            out |= (b & 0x7F) << shift
            if not b & 0x80:
                return out
            shift += 7
            if shift > 63:
                raise NettraceError(f"bad varint at byte {self.pos}")

    def utf16z(self) -> str:
        """A null-terminated UTF-16LE string."""
        start = self.pos
        while True:
            if self.pos + 2 > self.end:
                raise NettraceError(f"unterminated string at byte {start}")
            if self.data[self.pos] == 0 and self.data[self.pos + 1] == 0:
                text = bytes(self.data[start : self.pos]).decode("utf-16-le", "replace")
                self.pos += 2
                return text
            self.pos += 2

    def expect(self, tag: int) -> None:
        got = self.u8()
        if got != tag:
            raise NettraceError(f"tag {tag} expected at byte {self.pos - 1}, found {got}")


def parse(data: bytes | memoryview) -> Nettrace:
    """Parse a whole stream. A stream cut between objects (a process that exited, a
    session stopped by closing the socket) gives what it had, ``complete`` False."""
    r = _Reader(data)
    if bytes(r.take(len(MAGIC))) != MAGIC:
        raise NettraceError("not a nettrace stream (no 'Nettrace' magic)")
    n = r.i32()
    if bytes(r.take(n)) != _SIGNATURE:
        raise NettraceError("not a FastSerialization stream")
    out = Nettrace()
    while r.pos < r.end:
        tag = r.u8()
        if tag == _NULL:
            out.complete = True
            break
        if tag != _BEGIN:
            raise NettraceError(f"object expected at byte {r.pos - 1}, found tag {tag}")
        save = r.pos
        try:
            name = _type_name(r)
            if name == "Trace":
                out.info = _trace_info(r)
            elif name in _BLOCKS:
                _block(r, name, out)
            else:
                raise NettraceError(f"unknown object {name!r} at byte {save}")
            r.expect(_END)
        except NettraceError:
            if r.end - save < (1 << 20) and not out.events and not out.types:
                raise
            break  # cut mid-object: keep what came before
    return out


def _type_name(r: _Reader) -> str:
    r.expect(_BEGIN)
    r.expect(_NULL)
    r.i32()  # version
    r.i32()  # minimum reader version
    n = r.i32()
    name = bytes(r.take(n)).decode("ascii", "replace")
    r.expect(_END)
    return name


def _trace_info(r: _Reader) -> TraceInfo:
    y, mo, _dow, d, h, mi, s, ms = struct.unpack("<8H", r.take(16))
    qpc, freq = struct.unpack("<qq", r.take(16))
    ptr, pid, procs, rate = struct.unpack("<4i", r.take(16))
    start = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.{ms:03d}Z"
    return TraceInfo(pid, ptr, procs, qpc, freq or 1, rate, start)


def _block(r: _Reader, name: str, out: Nettrace) -> None:
    size = r.i32()
    r.pos += (-r.pos) % 4  # blocks start 4-byte aligned in the stream
    body = _Reader(r.data, r.pos, r.pos + size)
    r.take(size)  # bounds check, and move past the block
    if name == "StackBlock":
        body.i32()  # first id
        out.stacks += body.i32()
    elif name in ("EventBlock", "MetadataBlock"):
        for ev_meta, header in _events(body):
            if name == "MetadataBlock":
                t = _metadata(_Reader(header.payload))
                out.types[t.metadata_id] = t
            else:
                etype = out.types.get(ev_meta) or EventType(ev_meta, "?", 0, "", 0, 0, 0, ())
                out.events.append(
                    Event(
                        etype, header.timestamp, header.thread_id, header.stack_id, header.payload
                    )
                )


@dataclass
class _Header:
    metadata_id: int = 0
    sequence: int = 0
    capture_thread: int = 0
    processor: int = 0
    thread_id: int = 0
    stack_id: int = 0
    timestamp: int = 0
    payload_size: int = 0
    payload: bytes = b""


def _events(r: _Reader) -> Iterator[tuple[int, _Header]]:
    start = r.pos
    header_size = int(r.unpack("<H"))
    flags = int(r.unpack("<H"))
    r.pos = start + header_size
    h = _Header()
    compressed = bool(flags & 1)
    while r.pos < r.end:
        if compressed:
            f = r.u8()
            if f & _F_METADATA_ID:
                h.metadata_id = r.varint()
            if f & _F_CAPTURE_THREAD_AND_SEQUENCE:
                h.sequence += r.varint() + 1
                h.capture_thread = r.varint()
                h.processor = r.varint()
            elif h.metadata_id != 0:
                h.sequence += 1
            if f & _F_THREAD_ID:
                h.thread_id = r.varint()
            if f & _F_STACK_ID:
                h.stack_id = r.varint()
            h.timestamp += r.varint()
            if f & _F_ACTIVITY_ID:
                r.take(16)
            if f & _F_RELATED_ACTIVITY_ID:
                r.take(16)
            if f & _F_DATA_LENGTH:
                h.payload_size = r.varint()
            h.payload = bytes(r.take(h.payload_size))
        else:
            r.i32()  # event size
            h.metadata_id = r.i32() & 0x7FFFFFFF  # the high bit says "sorted"
            h.sequence = r.i32()
            h.thread_id = int(r.unpack("<q"))
            h.capture_thread = int(r.unpack("<q"))
            h.processor = r.i32()
            h.stack_id = r.i32()
            h.timestamp = int(r.unpack("<q"))
            r.take(32)  # activity ids
            h.payload_size = r.i32()
            h.payload = bytes(r.take(h.payload_size))
            r.pos += (-(r.pos - start)) % 4
        yield h.metadata_id, h


def _metadata(r: _Reader) -> EventType:
    metadata_id = r.i32()
    provider = r.utf16z()
    event_id = r.i32()
    name = r.utf16z()
    keywords = int(r.unpack("<q"))
    version = r.i32()
    level = r.i32()
    fields: tuple[FieldDef, ...] = ()
    if r.pos + 4 <= r.end:
        fields = _fields(r)
    return EventType(metadata_id, provider, event_id, name, keywords, version, level, fields)


def _fields(r: _Reader) -> tuple[FieldDef, ...]:
    count = r.i32()
    if not 0 <= count <= 1024:
        raise NettraceError(f"bad field count {count}")
    out = []
    for _ in range(count):
        code = r.i32()
        nested: tuple[FieldDef, ...] = ()
        element = 0
        if code == _OBJECT:
            nested = _fields(r)
        elif code == _ARRAY:
            element = r.i32()
            if element == _OBJECT:
                nested = _fields(r)
        out.append(FieldDef(r.utf16z(), code, nested, element))
    return tuple(out)


def decode(event: Event) -> dict[str, Any] | None:
    """An event's payload by field name; None when its metadata names no fields (the
    runtime's own events carry none in 3.x: their layout is in the runtime's manifest)."""
    if not event.type.fields:
        return None
    r = _Reader(event.payload)
    try:
        return _values(r, event.type.fields)
    except NettraceError:
        return None


def _values(r: _Reader, fields: tuple[FieldDef, ...]) -> dict[str, Any]:
    return {f.name: _value(r, f.type_code, f) for f in fields}


def _value(r: _Reader, code: int, f: FieldDef) -> Any:
    if code == _OBJECT:
        return _values(r, f.fields)
    if code == _STRING:
        return r.utf16z()
    if code == _ARRAY:
        n = int(r.unpack("<H"))
        return [_value(r, f.element, f) for _ in range(n)]
    if code == 17:
        return str(uuid.UUID(bytes_le=bytes(r.take(16))))
    if code == 15:
        return bytes(r.take(16)).hex()  # Decimal: kept raw
    fixed = _FIXED.get(code)
    if fixed is None:
        raise NettraceError(f"field type {code} unknown")
    value = r.unpack(fixed[0])
    return bool(value) if code == 3 else value
