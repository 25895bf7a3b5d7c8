"""Folded stacks -> speedscope's JSON file format (``speedscope.json``).

This module owns the speedscope artifact: one "sampled" profile whose stacks index
a shared frame table (https://www.speedscope.app/file-format-schema.json). Pure.
Python perf-trampoline frames (``py::function:file``) get their file split out,
so speedscope shows the function and groups by file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NotRequired, TypedDict

__all__ = ["SpeedscopeUnit", "to_speedscope"]

SCHEMA_URL = "https://www.speedscope.app/file-format-schema.json"

SpeedscopeUnit = Literal["none", "nanoseconds", "microseconds", "milliseconds", "seconds", "bytes"]


class SpeedscopeFrame(TypedDict):
    name: str
    file: NotRequired[str]


def _frame(name: str) -> SpeedscopeFrame:
    # py::qualname:path (CPython's perf map) -> name "qualname", file "path".
    if name.startswith("py::"):
        body = name[4:].removesuffix("_[j]")
        func, sep, file = body.partition(":")
        if sep and func and file:
            return {"name": func, "file": file}
    return {"name": name}


def to_speedscope(
    stacks: Mapping[str, int],
    *,
    name: str,
    unit: SpeedscopeUnit = "none",
    weight_per_sample: float = 1,
) -> dict[str, object]:
    """A speedscope file: each folded stack becomes one sample (root first) weighted
    by its count times ``weight_per_sample`` (e.g. the sampling period in ns)."""
    index: dict[str, int] = {}
    frames: list[SpeedscopeFrame] = []
    samples: list[list[int]] = []
    weights: list[float] = []
    for stack in sorted(stacks):
        count = stacks[stack]
        if count <= 0:
            continue
        ids: list[int] = []
        for frame in stack.split(";"):
            i = index.get(frame)
            if i is None:
                i = index[frame] = len(frames)
                frames.append(_frame(frame))
            ids.append(i)
        samples.append(ids)
        w = count * weight_per_sample
        weights.append(int(w) if float(w).is_integer() else w)
    total = sum(weights)
    return {
        "$schema": SCHEMA_URL,
        "exporter": "tracecar",
        "name": name,
        "activeProfileIndex": 0,
        "shared": {"frames": frames},
        "profiles": [
            {
                "type": "sampled",
                "name": name,
                "unit": unit,
                "startValue": 0,
                "endValue": total,
                "samples": samples,
                "weights": weights,
            }
        ],
    }
