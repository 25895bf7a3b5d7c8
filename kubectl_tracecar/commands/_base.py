"""What every command is made of, as kubectl builds its own: flags, then *Complete*
(argv -> one typed, frozen options object, every target, duration and size parsed
once), *Validate* (the checks between flags, before the cluster is touched), then
*Run* (options + the cluster -> an exit code).

Also the pieces several commands share: the ``TARGET``/``-l`` selection, output
formats by extension, ``say`` (progress on stderr), Ctrl-C handling, and
:class:`Wire`, the link between a flag and the agent's request field it fills.
Pure: nothing here talks to the cluster or the agent.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from kubectl_tracecar._targets import Target, parse_target
from kubectl_tracecar.errors import UsageError

if TYPE_CHECKING:
    from kubectl_tracecar._kube import Kube

Opts = TypeVar("Opts")


@dataclass(frozen=True, slots=True)
class Command(Generic[Opts]):
    """One ``kubectl tracecar`` command: registered once in :mod:`..commands`."""

    name: str
    help: str
    example: str
    flags: Callable[[argparse.ArgumentParser], None]
    """Adds the command's own flags (kubectl's global ones are added for it)."""
    complete: Callable[[argparse.Namespace], Opts]
    """Complete + Validate: the parsed flags -> the options, or a :class:`UsageError`."""
    run: Callable[[Kube, Opts], int]
    """Run: the exit code. ``Kube`` loads the kubeconfig on first use only."""
    wires: tuple[Wire, ...] = ()
    """The flags that fill the agent's request fields (checked against its schema)."""


# --- flags generated from the agent's request fields -----------------------------------


@dataclass(frozen=True, slots=True)
class Wire:
    """A flag and the agent's request field it fills (``endpoint`` as ``METHOD /path``,
    ``field`` a body property or a query parameter). The flag is generated from it: its
    choices, integer bounds and pattern. tests/plugin/test_wire.py checks each against
    the agent's own schema (``/openapi.json``), so the two cannot drift: a value the
    agent gains is offered here or named in ``not_offered`` with the reason."""

    flag: str
    endpoint: str
    field: str
    choices: tuple[str, ...] = ()
    not_offered: tuple[str, ...] = ()
    """Values the agent takes that the flag leaves out (each one's reason in a comment)."""
    ge: int | None = None
    le: int | None = None
    pattern: str | None = None
    items: bool = False
    """The field is a list; the flag gives its items (comma-separated or repeated)."""

    def add(self, parser: argparse._ActionsContainer, *names: str, **kw: Any) -> argparse.Action:
        """The flag, with this field's choices, bounds or pattern as its argparse type."""
        assert self.flag in names, (self.flag, names)
        if self.choices and not self.items:
            kw["choices"] = list(self.choices)
        elif self.ge is not None or self.le is not None or self.pattern is not None:
            kw["type"] = self.check
        return parser.add_argument(*names, **kw)

    def check(self, text: str) -> Any:
        """One value of the flag as the agent will accept it, or argparse's error."""
        if self.ge is not None or self.le is not None:
            try:
                n = int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
            if (self.ge is not None and n < self.ge) or (self.le is not None and n > self.le):
                raise argparse.ArgumentTypeError(f"{n} is outside {self.ge}..{self.le}")
            return n
        if self.pattern is not None and not re.fullmatch(self.pattern, text):
            raise argparse.ArgumentTypeError(f"{text!r} does not match {self.pattern}")
        return text

    def items_of(self, text: str) -> list[str]:
        """``int, str`` -> ``["int", "str"]``, each one checked."""
        out = [t.strip() for t in text.split(",") if t.strip()]
        for t in out:
            if self.choices and t not in self.choices:
                raise UsageError(
                    f"invalid value {t!r} for {self.flag}: choose from {', '.join(self.choices)}"
                )
            if self.pattern is not None and not re.fullmatch(self.pattern, t):
                raise UsageError(f"invalid value {t!r} for {self.flag}: must match {self.pattern}")
        return out


# The agent's own bounds, repeated so a bad value fails before any pod is reached
# (test_wire.py holds them equal to the agent's schema).
PID_MAX = 4_194_304
CONTAINER = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$"


# --- targets -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pods:
    """Which pods: ``TARGET`` or ``-l``, parsed once; ``all_pods`` for deploy/NAME."""

    target: Target
    all_pods: bool = False


def add_target(
    p: argparse.ArgumentParser, *, selector: bool = True, all_pods: bool = False
) -> None:
    p.add_argument("target", nargs="?", metavar="TARGET", help="POD, pod/NAME or deploy/NAME")
    if selector:
        p.add_argument("-l", "--selector", help="label selector: every matching running pod")
    if all_pods:
        p.add_argument("--all-pods", action="store_true", help="with deploy/NAME: every pod")


def pods_from(ns: argparse.Namespace, *, selector: bool = True, all_pods: bool = False) -> Pods:
    """The selection of a command registered with the same ``add_target`` arguments."""
    return Pods(
        parse_target(ns.target, selector=ns.selector if selector else None),
        all_pods=bool(ns.all_pods) if all_pods else False,
    )


def add_json_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=["json"], help="json: machine-readable output")


def add_attach(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--attach",
        action="store_true",
        help="when the pod has no agent, attach one first (as `kubectl tracecar attach`, "
        "joining -c's container or the pod's default; no restart)",
    )


# --- output files --------------------------------------------------------------------

FORMATS: list[tuple[str, str]] = [
    (".speedscope.json", "speedscope"),
    (".pb.gz", "pprof"),
    (".svg", "svg"),
    (".folded", "folded"),
    (".txt", "folded"),
    (".data", "perf_data"),
]


def output_format(path: Path) -> str:
    for ext, fmt in FORMATS:
        if path.name.endswith(ext):
            return fmt
    allowed = ", ".join(ext for ext, _ in FORMATS)
    raise UsageError(f"cannot tell the format of {path.name!r} from its name: use one of {allowed}")


# --- the terminal --------------------------------------------------------------------


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Interrupt:
    """Ctrl-C (or SIGTERM) ends a live command cleanly instead of with a traceback."""

    def __init__(self) -> None:
        self.hit = False

    def __enter__(self) -> Interrupt:
        self._old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self._old:
            signal.signal(s, self._handler)
        return self

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.hit = True
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def one_of(names: Sequence[str], given: Sequence[object]) -> None:
    """At most one of these flags (``--pid``, ``--process``...)."""
    if sum(x is not None for x in given) > 1:
        raise UsageError(f"give {' or '.join(names)}, not both")
