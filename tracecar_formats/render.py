"""One profile's stacks -> one output format, titled one way.

:func:`render` is the one door from folded stacks to the outputs a client asks for
(flame graph SVG, folded text, speedscope JSON, pprof), for every kind of profile:
a recorded CPU or off-CPU profile, an interval of the flight recorder, and (through
:attr:`RenderInfo.title`) a differential flame graph. A :class:`RenderInfo` says
what the stacks are; every output's title and subtitle come from it, so they read
the same whichever made them::

    CPU profile of pid 7 (app) in container web
    web-7d9f: 2026-12-06 18:40:00 UTC, 10.0 s; 99 Hz, dwarf call graphs, 990 samples

Pure and CPU-bound (an SVG of a day of the flight recorder takes seconds): a server
calls it in a worker thread, never on its event loop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from tracecar_formats.collapse import format_folded
from tracecar_formats.flamegraph import render_svg
from tracecar_formats.pprof import to_pprof
from tracecar_formats.speedscope import to_speedscope

Format = Literal["svg", "folded", "speedscope", "pprof"]
SampleTypes = tuple[tuple[str, str], tuple[str, str]]
CPU_SAMPLE_TYPES: SampleTypes = (("samples", "count"), ("cpu", "nanoseconds"))
OFF_CPU_SAMPLE_TYPES: SampleTypes = (("off_cpu", "microseconds"), ("off_cpu_time", "nanoseconds"))


def utc(t: float) -> str:
    """A Unix time as outputs print it."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def title(what: str, of: str) -> str:
    """Every output's title: ``CPU profile of pid 7 (app)``; a differential graph's too."""
    return f"{what} of {of}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderInfo:
    """What a profile's stacks are: the words and the units of every output."""

    what: str
    """The kind of profile: ``CPU profile``, ``Off-CPU profile``."""
    of: str
    """Whose: ``pid 7 (app) in container web``, ``the flight recorder's [...)``."""
    started_at: float
    """Unix seconds: when the stacks begin."""
    duration_s: float
    details: str = ""
    """The facts after the time in the subtitle: rate, call graphs, totals, caveats."""
    where: str = ""
    """The pod (or pods) in front of the subtitle; empty: left out."""
    count_name: str = "samples"
    """What a count counts, in words (the flame graph's tooltips)."""
    period_ns: int = 1
    """What one count weighs, in nanoseconds (speedscope's weights, pprof's period)."""
    sample_types: SampleTypes = CPU_SAMPLE_TYPES
    """pprof's (type, unit) pairs: the counts, and the counts times ``period_ns``."""

    @property
    def title(self) -> str:
        return title(self.what, self.of)

    @property
    def subtitle(self) -> str:
        when = f"{utc(self.started_at)}, {self.duration_s:.1f} s"
        head = f"{self.where}: {when}" if self.where else when
        return f"{head}; {self.details}" if self.details else head


def render(
    stacks: Mapping[str, int],
    fmt: Format,
    info: RenderInfo,
    *,
    sources: Mapping[str, tuple[str, int]] | None = None,
) -> bytes:
    """``stacks`` (folded, root first) as ``fmt``, titled and weighted by ``info``;
    ``sources`` (frame -> file and first line, where a symbolizer knows them) go into
    pprof's Function records."""
    if fmt == "folded":
        return format_folded(stacks).encode()
    if fmt == "svg":
        svg = render_svg(
            stacks, title=info.title, subtitle=info.subtitle, count_name=info.count_name
        )
        return svg.encode()
    if fmt == "speedscope":
        doc = to_speedscope(
            stacks,
            name=f"{info.title} ({info.subtitle})",
            unit="nanoseconds",
            weight_per_sample=info.period_ns,
        )
        return json.dumps(doc).encode()
    return to_pprof(
        stacks,
        period_ns=info.period_ns,
        duration_ns=round(info.duration_s * 1e9),
        time_ns=round(info.started_at * 1e9),
        sample_types=info.sample_types,
        sources=sources,
    )
