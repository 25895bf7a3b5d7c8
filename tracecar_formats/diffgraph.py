"""Two folded texts compared, as difffolded.pl's lines or the differential flame graph.

This is the comparison ``GET /profiles/diff`` and ``kubectl tracecar diff`` both give
(so the same two folded files draw the same graph either way); the callers own where
the texts come from, the labels, and how an empty side is reported. The rendering
choices: widths from the target (difffolded.pl's ``folded1 folded2 | flamegraph.pl``)
or from the base (its ``folded2 folded1 | flamegraph.pl --negate``), coloured by the
change either way. Pure: bytes in, bytes out.
"""

from __future__ import annotations

from typing import Literal

from tracecar_formats.diff import EmptyBase, diff_folded, flame_deltas, format_diff
from tracecar_formats.flamegraph import render_svg

__all__ = ["DiffFormat", "EmptySide", "Widths", "compare"]

DiffFormat = Literal["folded", "svg"]
Widths = Literal["target", "base"]


class EmptySide(EmptyBase):
    """The side normalised against has no samples: ``side`` is "base" or "target" (the
    target when the graph takes the base's widths, from the swapped rows)."""

    def __init__(self, side: Literal["base", "target"]) -> None:
        super().__init__(f"the {side} has no samples")
        self.side = side


def compare(
    base: bytes,
    target: bytes,
    *,
    fmt: DiffFormat,
    normalize: bool = True,
    strip_hex: bool = False,
    widths: Widths = "target",
    title: str = "Differential flame graph",
    base_label: str = "base",
    target_label: str = "target",
    unit: str = "samples",
) -> bytes:
    """``fmt`` "folded": the ``stack base target`` lines; "svg": the differential flame
    graph (red: more in the target, blue: less), titled ``title``."""
    # The folded rows are always (base, target), as `difffolded.pl base target` prints
    # them; a graph with the base's widths is drawn from the swapped rows, negated.
    swap = fmt == "svg" and widths == "base"
    first, second = (target, base) if swap else (base, target)
    try:
        rows = diff_folded(first, second, normalize=normalize, strip_hex=strip_hex)
    except EmptyBase:
        raise EmptySide("target" if swap else "base") from None
    if fmt == "folded":
        return format_diff(rows)
    stacks, deltas = flame_deltas(rows)
    scaled = "normalised to the same total" if normalize else "raw counts"
    subtitle = (
        f"widths: {'the base' if swap else 'the target'}'s {unit}; red: more in "
        f"{target_label} than in {base_label}, blue: less ({scaled})"
    )
    svg = render_svg(
        stacks, title=title, subtitle=subtitle, count_name=unit, deltas=deltas, negate=swap
    )
    return svg.encode()
