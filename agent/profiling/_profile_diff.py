"""``GET /profiles/diff``: two finished profiles -> folded or SVG comparison.

Owns the checks a comparison needs (both profiles finished, of the same type:
a CPU profile's samples and an off-CPU profile's blocked microseconds do not
compare), the labels and the 409 for an empty side; the comparison itself is
:func:`tracecar_formats.diffgraph.compare`, shared with ``kubectl tracecar diff``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from agent.errors import Conflict
from agent.profiling._artifacts import FOLDED
from agent.profiling._service import ProfileJob, Service, profile_type
from agent.profiling.outputs import units
from tracecar_formats.diffgraph import DiffFormat, EmptySide, Widths, compare
from tracecar_formats.render import title

__all__ = ["DiffFormat", "DiffOptions", "Widths", "differential"]


@dataclass(frozen=True, slots=True)
class DiffOptions:
    format: DiffFormat = "svg"
    normalize: bool = True
    strip_hex: bool = False
    widths: Widths = "target"


def _read(svc: Service, job: ProfileJob) -> bytes:
    path = svc.require_finished(job, FOLDED)
    assert path is not None
    return path.read_bytes()


async def differential(
    svc: Service, base: ProfileJob, target: ProfileJob, options: DiffOptions
) -> bytes:
    """The comparison of two profiles as ``options`` asks (folded text or SVG bytes)."""
    if profile_type(base) != profile_type(target):
        raise Conflict(
            f"profile {base.id} is {profile_type(base)} and {target.id} is "
            f"{profile_type(target)}: only profiles of the same type compare"
        )
    kind = profile_type(target)

    def run() -> bytes:
        return compare(
            _read(svc, base),
            _read(svc, target),
            fmt=options.format,
            normalize=options.normalize,
            strip_hex=options.strip_hex,
            widths=options.widths,
            title=title(
                f"Differential {'off-CPU' if kind == 'off-cpu' else 'CPU'} profile",
                f"profile {target.id} against profile {base.id}",
            ),
            base_label=f"base {base.id}",
            target_label=f"target {target.id}",
            unit=units(kind),
        )

    try:
        return await asyncio.to_thread(run)
    except EmptySide as e:
        empty = base if e.side == "base" else target
        raise Conflict(
            f"profile {empty.id} has no samples: there is nothing to "
            "normalise against (compare raw counts with normalize=false)"
        ) from None
