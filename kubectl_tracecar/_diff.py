"""``kubectl tracecar diff BASE TARGET -o OUT``: two local folded files compared.

Owns what is the plugin's own here: reading and checking the user's files (each
failure named, with its exit code), choosing the output by ``OUT``'s extension, and
the graph's title. The comparison itself is the agent's pure
:func:`tracecar_formats.diffgraph.compare`, so for the same two folded files this
command and the agent's ``GET /profiles/diff`` give the same lines and the same colours. No
cluster is needed: the files are what ``kubectl tracecar profile -o x.folded``
wrote, so two pods (two agents) compare as well as before and after.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kubectl_tracecar import _output
from kubectl_tracecar.errors import OK, NotFound, PluginError, UsageError
from tracecar_formats.diff import first_bad_line
from tracecar_formats.diffgraph import DiffFormat, EmptySide, compare

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


def cmd_diff(args: argparse.Namespace) -> int:
    out = Path(args.output_file)
    fmt = diff_format(out)
    base_path, target_path = Path(args.base), Path(args.target_file)
    base, target = base_path.name, target_path.name
    try:
        data = compare(
            read_folded(base_path),
            read_folded(target_path),
            fmt=fmt,
            normalize=not args.raw,
            strip_hex=args.strip_hex,
            widths=args.widths,
            title=f"Differential flame graph: {target} against {base}",
            base_label=base,
            target_label=target,
        )
    except EmptySide as e:
        raise PluginError(
            f"{base if e.side == 'base' else target} has no samples: there is "
            "nothing to normalise against",
            hint="compare raw counts with --raw",
        ) from None
    _output.write_whole(out, data)
    what = "differential flame graph" if fmt == "svg" else "diff folded stacks"
    print(f"{what} of {target_path} against {base_path} -> {out}")
    return OK
