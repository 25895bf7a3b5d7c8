"""Differential folded stacks: FlameGraph's ``difffolded.pl``, byte for byte.

This module owns the ``GET /profiles/diff`` folded format and the per-stack
deltas the differential flame graph is coloured by (for the agent's endpoint and
``kubectl tracecar diff`` alike). It is pure: two folded texts in, rows (or their
text, or the flame graph's widths and deltas) out.

``difffolded.pl [-n] [-s] folded1 folded2`` prints ``stack count1 count2`` for
every stack of either file (0 where a file lacks it). Kept exactly here:

* the line grammar: ``/^(.*)\\s+?(\\d+(?:\\.\\d*)?)$/`` on bytes (ASCII ``\\s``
  and ``\\d``, as Perl on a byte string); a line that does not match counts as
  the empty stack with nothing added, as Perl's undef does;
* ``-s``: every ``0x...`` hex number becomes ``0x...`` before merging;
* ``-n``: when the totals differ, each first-file count becomes
  ``int(count1 * total2 / total1)`` (the second file's counts are untouched);
* Perl's number printing (``%.15g``: ``3.0`` prints as ``3``).

One difference, on purpose: difffolded.pl prints in Perl's hash order, which
changes from run to run; here the lines are sorted, so the output is stable
(and equals the script's output once sorted, which is what the tests check).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "DiffRow",
    "EmptyBase",
    "diff_folded",
    "first_bad_line",
    "flame_deltas",
    "format_diff",
    "parse_folded",
]

_LINE = re.compile(rb"^(.*)\s+?(\d+(?:\.\d*)?)$")
_HEX = re.compile(rb"0x[0-9a-fA-F]+")

Number = int | float


class EmptyBase(ValueError):
    """Normalising against a base with no samples (difffolded.pl dies dividing by 0)."""


@dataclass(frozen=True, slots=True)
class DiffRow:
    stack: bytes
    base: Number
    target: Number

    @property
    def delta(self) -> Number:
        return self.target - self.base


def _number(text: bytes) -> Number:
    return float(text) if b"." in text else int(text)


def _lines(data: bytes) -> Iterable[bytes]:
    # Perl's `while (<FILE>) { chomp; ... }`: lines end at \n; the last may lack one.
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def parse_folded(data: bytes, *, strip_hex: bool = False) -> tuple[dict[bytes, Number], Number]:
    """One folded file as difffolded.pl reads it: counts per stack, and the total."""
    counts: dict[bytes, Number] = {}
    total: Number = 0
    for line in _lines(data):
        m = _LINE.match(line)
        stack, count = (m.group(1), _number(m.group(2))) if m else (b"", 0)
        if strip_hex:
            stack = _HEX.sub(b"0x...", stack)
        counts[stack] = counts.get(stack, 0) + count
        total += count
    return counts, total


def first_bad_line(data: bytes) -> int | None:
    """The 1-based number of the first non-blank line that is not ``stack count``, or
    None. difffolded.pl takes such lines silently (as the empty stack); a caller that
    reads a user's files checks first, so a wrong file is named instead of diffed."""
    for number, line in enumerate(_lines(data), start=1):
        if line.strip() and not _LINE.match(line):
            return number
    return None


def diff_folded(
    base: bytes, target: bytes, *, normalize: bool = True, strip_hex: bool = False
) -> list[DiffRow]:
    """Every stack of either file with both counts, sorted (difffolded.pl's rows)."""
    counts1, total1 = parse_folded(base, strip_hex=strip_hex)
    counts2, total2 = parse_folded(target, strip_hex=strip_hex)
    scale = normalize and total1 != total2
    if scale and total1 == 0:
        raise EmptyBase("the base has no samples: there is nothing to normalise against")
    rows = []
    for stack in sorted(counts1.keys() | counts2.keys()):
        c1: Number = counts1.get(stack, 0)
        if scale:
            c1 = int(c1 * total2 / total1)
        rows.append(DiffRow(stack, c1, counts2.get(stack, 0)))
    return rows


def flame_deltas(rows: Iterable[DiffRow]) -> tuple[dict[str, int], dict[str, float]]:
    """The differential flame graph's input, as ``flamegraph.pl`` reads difffolded.pl's
    lines: each stack's width (its second count) and its delta (second - first).

    Stacks are keyed as text for :func:`~tracecar_formats.flamegraph.render_svg`; two
    that only differ in invalid UTF-8 decode alike and are summed. Rows drawn with the
    base's widths are the swapped ``(target, base)`` rows, rendered with ``negate``
    so that red still means "grew in the target".
    """
    stacks: dict[str, int] = {}
    deltas: dict[str, float] = {}
    for row in rows:
        stack = row.stack.decode("utf-8", "replace")
        stacks[stack] = stacks.get(stack, 0) + round(row.target)
        deltas[stack] = deltas.get(stack, 0.0) + float(row.delta)
    return stacks, deltas


def _perl(n: Number) -> bytes:
    if isinstance(n, int):
        return str(n).encode()
    return format(n, ".15g").encode()


def format_diff(rows: Iterable[DiffRow]) -> bytes:
    """``stack base target`` lines as difffolded.pl prints them, in byte order."""
    lines = sorted(r.stack + b" " + _perl(r.base) + b" " + _perl(r.target) + b"\n" for r in rows)
    return b"".join(lines)
