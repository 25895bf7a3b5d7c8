"""Folded stacks -> pprof (gzipped ``perftools.profiles.Profile`` protobuf).

This module owns the ``profile.pb.gz`` artifact, which ``go tool pprof``,
Pyroscope and Grafana load. A small hand encoder of the wire format keeps the
agent free of generated protobuf code and of a protobuf runtime; the field
numbers are those of github.com/google/pprof proto/profile.proto and the tests
decode the output with an independent parser.

Layout: one Function and one Location per distinct frame name (folded stacks
carry names, not addresses), samples with the leaf first, values
``[samples/count, cpu/nanoseconds]`` (count x period), ``period_type`` cpu/nanoseconds.

Source records, where known: a Function's ``filename`` and ``start_line``, and its
Location's Line ``line``. Since folded stacks count per function (not per address),
a Location's line is its function's first line (as py-spy's ``--function`` names
frames). They come from the frame itself for py-spy's ``function (file:line)`` and
Python's perf-trampoline ``py::function:file`` (no line), and from ``sources`` (frame
name -> (file, line)) for the rest: the agent fills it from Go's pclntab.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Mapping

__all__ = ["to_pprof"]

# Field numbers from profile.proto.
_P_SAMPLE_TYPE, _P_SAMPLE, _P_LOCATION, _P_FUNCTION, _P_STRINGS = 1, 2, 4, 5, 6
_P_TIME, _P_DURATION, _P_PERIOD_TYPE, _P_PERIOD = 9, 10, 11, 12
_VT_TYPE, _VT_UNIT = 1, 2
_S_LOCATION_ID, _S_VALUE = 1, 2
_L_ID, _L_LINE = 1, 4
_LINE_FUNCTION_ID, _LINE_LINE = 1, 2
_F_ID, _F_NAME, _F_SYSTEM_NAME, _F_FILENAME, _F_START_LINE = 1, 2, 3, 4, 5
# py-spy's frames: "function (file:line)".
_PYSPY_FRAME = re.compile(r"^(.+) \((.+):(\d+)\)$")


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 negatives are ten-byte two's complement varints
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _int(field: int, value: int) -> bytes:
    # proto3: zero is the default and is not written.
    return _key(field, 0) + _varint(value) if value else b""


def length_delimited(field: int, payload: bytes) -> bytes:
    """One protobuf length-delimited field (bytes, string or message): what the pprof
    encoding here, and the Pyroscope push request (agent.sinks), are made of."""
    return _key(field, 2) + _varint(len(payload)) + payload


_bytes = length_delimited


def _packed(field: int, values: Iterable[int]) -> bytes:
    return _bytes(field, b"".join(_varint(v) for v in values))


# The encoding's pieces, for the other pprof writers (tracecar_formats.memprofile).
int_field = _int
packed = _packed


def _split_py(name: str) -> tuple[str, str, int]:
    """A frame's function, file and line when the frame says them ("" and 0 if not)."""
    if name.startswith("py::"):
        func, sep, file = name[4:].removesuffix("_[j]").partition(":")
        if sep and func and file:
            return func, file, 0
    elif name.endswith(")"):
        m = _PYSPY_FRAME.match(name)
        if m is not None:
            return m.group(1), m.group(2), int(m.group(3))
    return name, "", 0


def to_pprof(
    stacks: Mapping[str, int],
    *,
    period_ns: int,
    duration_ns: int,
    time_ns: int,
    sample_types: tuple[tuple[str, str], tuple[str, str]] = (
        ("samples", "count"),
        ("cpu", "nanoseconds"),
    ),
    sources: Mapping[str, tuple[str, int]] | None = None,
) -> bytes:
    """Encode folded stacks (counts of samples, each ``period_ns`` of CPU) as gzipped pprof.

    ``sample_types``: the (type, unit) of the count and of count x period (an off-CPU
    profile's counts are microseconds off CPU). ``sources``: frame name -> (file, first
    line) where a symbolizer knows them (see the module docstring).
    """
    sources = sources or {}
    strings: dict[str, int] = {"": 0}

    def s(text: str) -> int:
        i = strings.get(text)
        if i is None:
            i = strings[text] = len(strings)
        return i

    functions: list[bytes] = []
    locations: list[bytes] = []
    frame_ids: dict[str, int] = {}
    samples: list[bytes] = []

    header = [
        _bytes(_P_SAMPLE_TYPE, _int(_VT_TYPE, s(kind)) + _int(_VT_UNIT, s(unit)))
        for kind, unit in sample_types
    ]
    for stack in sorted(stacks):
        count = stacks[stack]
        if count <= 0:
            continue
        ids: list[int] = []
        for frame in stack.split(";"):
            fid = frame_ids.get(frame)
            if fid is None:
                fid = frame_ids[frame] = len(frame_ids) + 1
                func, file, line = _split_py(frame)
                if not file and frame in sources:
                    file, line = sources[frame]
                functions.append(
                    _int(_F_ID, fid)
                    + _int(_F_NAME, s(func))
                    + _int(_F_SYSTEM_NAME, s(frame))
                    + _int(_F_FILENAME, s(file))
                    + _int(_F_START_LINE, line)
                )
                locations.append(
                    _int(_L_ID, fid)
                    + _bytes(_L_LINE, _int(_LINE_FUNCTION_ID, fid) + _int(_LINE_LINE, line))
                )
            ids.append(fid)
        ids.reverse()  # pprof: the leaf is location_id[0]
        samples.append(_packed(_S_LOCATION_ID, ids) + _packed(_S_VALUE, (count, count * period_ns)))

    body = bytearray()
    for part in header:
        body += part
    for sample in samples:
        body += _bytes(_P_SAMPLE, sample)
    for loc in locations:
        body += _bytes(_P_LOCATION, loc)
    for fn in functions:
        body += _bytes(_P_FUNCTION, fn)
    body += _int(_P_TIME, time_ns)
    body += _int(_P_DURATION, duration_ns)
    kind, unit = sample_types[1]
    body += _bytes(_P_PERIOD_TYPE, _int(_VT_TYPE, s(kind)) + _int(_VT_UNIT, s(unit)))
    body += _int(_P_PERIOD, period_ns)
    # The string table last: every index above is known by now.
    for text in strings:
        body += _bytes(_P_STRINGS, text.encode("utf-8", "replace"))
    return gzip.compress(bytes(body), compresslevel=6, mtime=0)
