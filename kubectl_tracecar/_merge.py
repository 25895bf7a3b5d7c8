"""Many pods' profiles into one: folded stacks summed (optionally under a root frame
per pod), and the per-pod file names written beside the merged one. Pure.
The folded parser is imported when stacks are merged: ``--help`` does not load it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def merge_folded(per_pod: Mapping[str, str], *, by_pod: bool = False) -> dict[str, int]:
    """Sum the stacks of every pod; with ``by_pod`` each pod's stacks sit under a frame
    ``pod:NAME`` so replicas can be told apart in the merged graph."""
    from tracecar_formats.collapse import parse_folded

    out: dict[str, int] = {}
    for pod, text in per_pod.items():
        for stack, count in parse_folded(text).items():
            key = f"pod:{pod};{stack}" if by_pod else stack
            out[key] = out.get(key, 0) + count
    return out


def per_pod_path(path: Path, pod: str) -> Path:
    """``flame.svg`` + ``web-7d9f-abcde`` -> ``flame.web-7d9f-abcde.svg`` (double
    extensions such as ``.speedscope.json`` and ``.pb.gz`` kept whole)."""
    name = path.name
    for ext in (".speedscope.json", ".pb.gz"):
        if name.endswith(ext):
            return path.with_name(f"{name[: -len(ext)]}.{pod}{ext}")
    stem, dot, ext = name.rpartition(".")
    if not dot:
        return path.with_name(f"{name}.{pod}")
    return path.with_name(f"{stem}.{pod}.{ext}")
