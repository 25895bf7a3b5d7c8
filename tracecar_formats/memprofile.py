"""Memory profiles' folded stacks -> pprof with two sample types (gzipped protobuf).

A memory profile has two weights for each stack, bytes and allocations, which are not
one count times a period as a CPU profile's are: this module writes both as the
sample types Go's heap profiles use, so ``go tool pprof``, Pyroscope and Grafana read
them right: ``alloc_objects``/``count`` and ``alloc_space``/``bytes`` for where memory
was allocated, ``inuse_objects``/``count`` and ``inuse_space``/``bytes`` for what is
still outstanding (a leak profile). The bytes are the default sample type.

Values are estimates already scaled for sampling (the profile's notes say how), so
the period is 1 byte. Field numbers from github.com/google/pprof proto/profile.proto,
encoded with :func:`tracecar_formats.pprof.length_delimited`.
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping

from tracecar_formats.pprof import int_field as _int
from tracecar_formats.pprof import length_delimited
from tracecar_formats.pprof import packed as _packed

__all__ = ["sample_types", "to_memory_pprof"]

_P_SAMPLE_TYPE, _P_SAMPLE, _P_LOCATION, _P_FUNCTION, _P_STRINGS = 1, 2, 4, 5, 6
_P_TIME, _P_DURATION, _P_PERIOD_TYPE, _P_PERIOD, _P_DEFAULT_SAMPLE_TYPE = 9, 10, 11, 12, 14
_VT_TYPE, _VT_UNIT = 1, 2
_S_LOCATION_ID, _S_VALUE = 1, 2
_L_ID, _L_LINE = 1, 4
_LINE_FUNCTION_ID = 1
_F_ID, _F_NAME, _F_SYSTEM_NAME = 1, 2, 3


def sample_types(*, inuse: bool) -> tuple[tuple[str, str], tuple[str, str]]:
    """(objects, count) and (space, bytes): alloc_* or inuse_*."""
    prefix = "inuse" if inuse else "alloc"
    return (f"{prefix}_objects", "count"), (f"{prefix}_space", "bytes")


def to_memory_pprof(
    by_bytes: Mapping[str, int],
    by_count: Mapping[str, int],
    *,
    inuse: bool,
    duration_ns: int,
    time_ns: int,
) -> bytes:
    """Encode a memory profile's two folded views (same stacks) as gzipped pprof."""
    strings: dict[str, int] = {"": 0}

    def s(text: str) -> int:
        i = strings.get(text)
        if i is None:
            i = strings[text] = len(strings)
        return i

    types = sample_types(inuse=inuse)
    body = bytearray()
    for kind, unit in types:
        body += length_delimited(_P_SAMPLE_TYPE, _int(_VT_TYPE, s(kind)) + _int(_VT_UNIT, s(unit)))
    frame_ids: dict[str, int] = {}
    functions: list[bytes] = []
    for stack in sorted(set(by_bytes) | set(by_count)):
        nbytes, count = by_bytes.get(stack, 0), by_count.get(stack, 0)
        if nbytes <= 0 and count <= 0:
            continue
        ids: list[int] = []
        for frame in stack.split(";"):
            fid = frame_ids.get(frame)
            if fid is None:
                fid = frame_ids[frame] = len(frame_ids) + 1
                functions.append(
                    _int(_F_ID, fid) + _int(_F_NAME, s(frame)) + _int(_F_SYSTEM_NAME, s(frame))
                )
            ids.append(fid)
        ids.reverse()  # the leaf first
        sample = _packed(_S_LOCATION_ID, ids) + _packed(_S_VALUE, (count, nbytes))
        body += length_delimited(_P_SAMPLE, sample)
    for fid in range(1, len(frame_ids) + 1):
        loc = _int(_L_ID, fid) + length_delimited(_L_LINE, _int(_LINE_FUNCTION_ID, fid))
        body += length_delimited(_P_LOCATION, loc)
    for fn in functions:
        body += length_delimited(_P_FUNCTION, fn)
    body += _int(_P_TIME, time_ns)
    body += _int(_P_DURATION, duration_ns)
    space = types[1][0]
    body += length_delimited(
        _P_PERIOD_TYPE, _int(_VT_TYPE, s("space")) + _int(_VT_UNIT, s("bytes"))
    )
    body += _int(_P_PERIOD, 1)
    body += _int(_P_DEFAULT_SAMPLE_TYPE, s(space))
    for text in strings:
        body += length_delimited(_P_STRINGS, text.encode("utf-8", "replace"))
    return gzip.compress(bytes(body), compresslevel=6, mtime=0)
