"""Human output for people, JSON for scripts (``-o json``), a bar chart for
histograms, and output files written whole; nothing here does I/O beyond the
stream or the path it is handed."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO


def emit_json(value: Any, out: TextIO | None = None) -> None:
    # sys.stdout looked up per call, not bound at import (a replaced stdout is honoured).
    (out or sys.stdout).write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """Columns as kubectl prints them: upper-case headers, left-aligned, 3 spaces apart."""
    cells = [[str(h).upper() for h in headers], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines) + "\n"


def _human(n: float, unit: str | None) -> str:
    if unit == "ns":
        for div, name in ((1e9, "s"), (1e6, "ms"), (1e3, "us")):
            if abs(n) >= div:
                return f"{n / div:g}{name}"
        return f"{n:g}ns"
    return f"{n:g}"


def histogram(buckets: Sequence[dict[str, Any]], *, unit: str | None, width: int = 40) -> str:
    """bpftrace-style power-of-two buckets as ``[lo, hi)  count |@@@@   |`` lines."""
    rows = [b for b in buckets if int(b.get("count", 0)) > 0]
    if not rows:
        return "(no samples)\n"
    top = max(int(b["count"]) for b in rows)
    labels = []
    for b in rows:
        lo, hi = b.get("min"), b.get("max")
        lo_s = "-inf" if lo is None else _human(float(lo), unit)
        hi_s = "inf" if hi is None else _human(float(hi) + 1, unit)
        labels.append(f"[{lo_s}, {hi_s})")
    lw = max(len(x) for x in labels)
    cw = max(len(str(b["count"])) for b in rows)
    out = []
    for label, b in zip(labels, rows, strict=True):
        n = int(b["count"])
        bar = "@" * max(1, round(width * n / top))
        out.append(f"{label.ljust(lw)}  {str(n).rjust(cw)} |{bar.ljust(width)}|")
    return "\n".join(out) + "\n"


def event_line(event: dict[str, Any]) -> str:
    """One probe hit on one line: pid/tid, arguments, return value, latency."""
    parts = [f"pid={event.get('pid')}", f"tid={event.get('tid')}"]
    if "function" in event:  # a Python function's call
        parts.append(f"{event['function']} ({event.get('file')}:{event.get('line')})")
    args = sorted((k for k in event if k.startswith("arg")), key=lambda k: int(k[3:] or 0))
    parts += [f"{k}={json.dumps(event[k])}" for k in args]
    if "retval" in event:
        parts.append(f"retval={json.dumps(event['retval'])}")
    if "latency_ns" in event:
        parts.append(f"latency={_human(float(event['latency_ns']), 'ns')}")
    if "stack" in event:
        parts.append(f"stack={';'.join(map(str, event['stack']))}")
    return " ".join(parts)


def write_whole(path: Path, data: bytes) -> None:
    """Written whole or not at all: a half-written flame graph is worse than none."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
