"""``GET /profiles/diff``: two finished profiles -> difffolded.pl's rows -> folded or SVG.

Owns the checks a comparison needs (both profiles finished, of the same type:
a CPU profile's samples and an off-CPU profile's blocked microseconds do not
compare) and the rendering choices: widths from the target (difffolded.pl's
``folded1 folded2 | flamegraph.pl``) or from the base (its ``folded2 folded1 |
flamegraph.pl --negate``), coloured by the change either way.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

from agent.errors import Conflict
from agent.jobs import Job
from agent.profiling._artifacts import FOLDED
from agent.profiling._service import Service, profile_type, units
from agent.profiling.diff import DiffRow, EmptyBase, diff_folded, flame_deltas, format_diff
from agent.profiling.flamegraph import render_svg

DiffFormat = Literal["folded", "svg"]
Widths = Literal["target", "base"]


@dataclass(frozen=True, slots=True)
class DiffOptions:
    format: DiffFormat = "svg"
    normalize: bool = True
    strip_hex: bool = False
    widths: Widths = "target"


def _read(svc: Service, job: Job) -> bytes:
    path = svc.require_finished(job, FOLDED)
    assert path is not None
    return path.read_bytes()


def _svg(rows: list[DiffRow], base: Job, target: Job, options: DiffOptions) -> str:
    swap = options.widths == "base"
    # Swapped rows are (target, base): widths from the base, drawn with negate.
    stacks, deltas = flame_deltas(rows)
    kind = profile_type(target)
    unit = units(kind)
    scaled = "normalised to the same total" if options.normalize else "raw counts"
    subtitle = (
        f"widths: {'the base' if swap else 'the target'}'s {unit}; red: more in target "
        f"{target.id} than in base {base.id}, blue: less ({scaled})"
    )
    return render_svg(
        stacks,
        title=f"Differential {kind} flame graph: {target.id} against {base.id}",
        subtitle=subtitle,
        count_name=unit,
        deltas=deltas,
        negate=swap,
    )


async def differential(svc: Service, base: Job, target: Job, options: DiffOptions) -> bytes:
    """The comparison of two profiles as ``options`` asks (folded text or SVG bytes)."""
    if profile_type(base) != profile_type(target):
        raise Conflict(
            f"profile {base.id} is {profile_type(base)} and {target.id} is "
            f"{profile_type(target)}: only profiles of the same type compare"
        )
    base_text, target_text = await asyncio.to_thread(lambda: (_read(svc, base), _read(svc, target)))
    # The folded rows are always (base, target), as `difffolded.pl base target` prints
    # them; an SVG with the base's widths is drawn from the swapped rows.
    swap = options.format == "svg" and options.widths == "base"
    first, second = (target_text, base_text) if swap else (base_text, target_text)
    try:
        rows = diff_folded(first, second, normalize=options.normalize, strip_hex=options.strip_hex)
    except EmptyBase:
        raise Conflict(
            f"profile {(target if swap else base).id} has no samples: there is nothing to "
            "normalise against (compare raw counts with normalize=false)"
        ) from None
    if options.format == "folded":
        return format_diff(rows)
    return (await asyncio.to_thread(_svg, rows, base, target, options)).encode()
