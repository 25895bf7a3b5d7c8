"""``kubectl tracecar diff BASE TARGET -o OUT``: two local folded files compared.

Owns what is the plugin's own here: reading and checking the user's files (each
failure named, with its exit code), choosing the output by ``OUT``'s extension, and
the graph's title. The comparison itself is the agent's pure modules,
:mod:`agent.profiling.diff` (difffolded.pl's rows and the flame graph's deltas) and
:mod:`agent.profiling.flamegraph`, so for the same two folded files this command and
the agent's ``GET /profiles/diff`` give the same lines and the same colours. No
cluster is needed: the files are what ``kubectl tracecar profile -o x.folded``
wrote, so two pods (two agents) compare as well as before and after.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

from agent.profiling.diff import EmptyBase, diff_folded, first_bad_line, flame_deltas, format_diff
from agent.profiling.flamegraph import render_svg
from kubectl_tracecar import _output
from kubectl_tracecar.errors import OK, NotFound, PluginError, UsageError

DiffFormat = Literal["svg", "folded"]
Widths = Literal["target", "base"]

_FORMATS: dict[str, DiffFormat] = {".svg": "svg", ".folded": "folded"}


def diff_format(path: Path) -> DiffFormat:
    """``.svg``: the differential flame graph; ``.folded``: difffolded.pl's lines."""
    fmt = _FORMATS.get(path.suffix)
    if fmt is None:
        allowed = ", ".join(_FORMATS)
        raise UsageError(f"cannot tell the format of {path.name!r} from its name: use {allowed}")
    return fmt


def read_folded(path: Path) -> bytes:
    """A folded file's bytes, or the error that says what is wrong with it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"no such file: {path}") from None
    except OSError as e:
        raise PluginError(f"cannot read {path}: {e.strerror or e}") from None
    # difffolded.pl would read any file (a line it cannot parse is an empty stack), so a
    # flame.svg given by mistake would "compare"; naming the line stops that.
    bad = first_bad_line(data)
    if bad is not None or b"\0" in data:
        why = "it is binary" if bad is None else f"line {bad} is not 'frame;frame;... COUNT'"
        raise UsageError(
            f"{path} is not folded stacks: {why}",
            hint="give files written by `kubectl tracecar profile ... -o x.folded`",
        )
    return data


def render_diff(
    base: bytes,
    target: bytes,
    *,
    fmt: DiffFormat,
    normalize: bool = True,
    strip_hex: bool = False,
    widths: Widths = "target",
    base_name: str = "base",
    target_name: str = "target",
) -> bytes:
    """The comparison as ``fmt``: difffolded.pl's ``stack base target`` lines, or the
    differential flame graph (red: grew in the target, blue: shrank)."""
    # The folded rows are always (base, target), as `difffolded.pl base target` prints
    # them; a graph with the base's widths is drawn from the swapped rows, negated.
    swap = fmt == "svg" and widths == "base"
    first, second = (target, base) if swap else (base, target)
    try:
        rows = diff_folded(first, second, normalize=normalize, strip_hex=strip_hex)
    except EmptyBase:
        raise PluginError(
            f"{target_name if swap else base_name} has no samples: there is nothing to "
            "normalise against",
            hint="compare raw counts with --raw",
        ) from None
    if fmt == "folded":
        return format_diff(rows)
    stacks, deltas = flame_deltas(rows)
    scaled = "normalised to the same total" if normalize else "raw counts"
    subtitle = (
        f"widths: {'the base' if swap else 'the target'}'s samples; red: more in "
        f"{target_name} than in {base_name}, blue: less ({scaled})"
    )
    svg = render_svg(
        stacks,
        title=f"Differential flame graph: {target_name} against {base_name}",
        subtitle=subtitle,
        deltas=deltas,
        negate=swap,
    )
    return svg.encode()


def cmd_diff(args: argparse.Namespace) -> int:
    out = Path(args.output_file)
    fmt = diff_format(out)
    base_path, target_path = Path(args.base), Path(args.target_file)
    data = render_diff(
        read_folded(base_path),
        read_folded(target_path),
        fmt=fmt,
        normalize=not args.raw,
        strip_hex=args.strip_hex,
        widths=args.widths,
        base_name=base_path.name,
        target_name=target_path.name,
    )
    _output.write_whole(out, data)
    what = "differential flame graph" if fmt == "svg" else "diff folded stacks"
    print(f"{what} of {target_path} against {base_path} -> {out}")
    return OK
