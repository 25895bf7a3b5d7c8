"""``kubectl tracecar diff BASE TARGET -o OUT``: two local folded files compared.

Owns what is the plugin's own here: reading and checking the user's files (each
failure named, with its exit code), choosing the output by ``OUT``'s extension, and
the graph's title. The comparison itself is :func:`tracecar_formats.diffgraph.compare`,
so for the same two folded files this command and the agent's ``GET /profiles/diff``
give the same lines and the same colours. No cluster is needed (the kubeconfig is
never read): the files are what ``kubectl tracecar profile -o x.folded`` wrote, so two
pods (two agents) compare as well as before and after.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from kubectl_tracecar import _output
from kubectl_tracecar._kube import Kube
from kubectl_tracecar.commands._base import Command, Wire
from kubectl_tracecar.errors import OK, NotFound, PluginError, UsageError

_EP = "GET /profiles/diff"
WIDTHS = Wire("--widths", _EP, "widths", choices=("target", "base"))
STRIP_HEX = Wire("--strip-hex", _EP, "strip_hex")
_FORMATS = {".svg": "svg", ".folded": "folded"}


@dataclass(frozen=True, slots=True)
class DiffOptions:
    base: Path
    target: Path
    output: Path
    format: str = "svg"
    raw: bool = False
    widths: str = "target"
    strip_hex: bool = False


def flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", metavar="BASE", help="the folded file compared against (before)")
    p.add_argument("target_file", metavar="TARGET", help="the folded file that changed (after)")
    p.add_argument(
        "-o",
        "--output-file",
        default="diff.svg",
        metavar="FILE",
        help="diff.svg (red: grew in TARGET, blue: shrank) or diff.folded "
        "(`stack base target` lines, as difffolded.pl)",
    )
    p.add_argument(
        "--raw",
        action="store_true",
        help="compare raw counts (default: BASE scaled to TARGET's total, difffolded.pl -n)",
    )
    WIDTHS.add(
        p,
        "--widths",
        default="target",
        help="svg: frame widths from TARGET (default) or from BASE (shows what vanished)",
    )
    STRIP_HEX.add(
        p, "--strip-hex", action="store_true", help="merge stacks differing only in 0x... addresses"
    )


def diff_format(path: Path) -> str:
    """``.svg``: the differential flame graph; ``.folded``: difffolded.pl's lines."""
    fmt = _FORMATS.get(path.suffix)
    if fmt is None:
        allowed = ", ".join(_FORMATS)
        raise UsageError(f"cannot tell the format of {path.name!r} from its name: use {allowed}")
    return fmt


def complete(ns: argparse.Namespace) -> DiffOptions:
    out = Path(ns.output_file)
    return DiffOptions(
        base=Path(ns.base),
        target=Path(ns.target_file),
        output=out,
        format=diff_format(out),
        raw=ns.raw,
        widths=ns.widths,
        strip_hex=ns.strip_hex,
    )


def read_folded(path: Path) -> bytes:
    """A folded file's bytes, or the error that says what is wrong with it."""
    from tracecar_formats.diff import first_bad_line

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


def run(kube: Kube, o: DiffOptions) -> int:
    """``kube`` is not used: its kubeconfig is never loaded."""
    from tracecar_formats.diffgraph import EmptySide, compare

    base, target = o.base.name, o.target.name
    try:
        data = compare(
            read_folded(o.base),
            read_folded(o.target),
            fmt="svg" if o.format == "svg" else "folded",
            normalize=not o.raw,
            strip_hex=o.strip_hex,
            widths="base" if o.widths == "base" else "target",
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
    _output.write_whole(o.output, data)
    what = "differential flame graph" if o.format == "svg" else "diff folded stacks"
    print(f"{what} of {o.target} against {o.base} -> {o.output}")
    return OK


COMMAND = Command(
    name="diff",
    help="compare two folded profiles: a differential flame graph or difffolded.pl's lines",
    example=(
        "kubectl tracecar profile web-7d9f-abcde -o a.folded   # two pods, or before/after\n"
        "  kubectl tracecar profile web-7d9f-fghij -o b.folded\n"
        "  kubectl tracecar diff a.folded b.folded -o diff.svg    # red: more in b, blue: less\n"
        "  kubectl tracecar diff before.folded after.folded -o diff.folded --raw"
    ),
    flags=flags,
    complete=complete,
    run=run,
    wires=(WIDTHS, STRIP_HEX),
)
