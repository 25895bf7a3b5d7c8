"""The command line, as kubectl spells it: global flags (``-n``, ``--context``,
``--kubeconfig``, ``--as``) accepted before or after the command, then the command's
own flags, completed into its options (:mod:`.commands`). Pure: parsing touches
nothing, and every flag, target and duration is checked here, so a bad one is a usage
error (exit 2, with the command's usage) before any kubeconfig is read."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from kubectl_tracecar._kube import KubeFlags
from kubectl_tracecar.commands import COMMANDS, Command
from kubectl_tracecar.errors import UsageError

PROG = "kubectl tracecar"


@dataclass(frozen=True, slots=True)
class Invocation:
    """One command line: the command, kubectl's flags, the command's options."""

    command: Command[Any]
    kube: KubeFlags
    options: Any


def _globals(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Sub-parsers default to SUPPRESS so a flag given before the command is not reset.
    d = None if top else argparse.SUPPRESS
    g = parser.add_argument_group("kubectl flags")
    g.add_argument("-n", "--namespace", default=d, help="the namespace (default: the context's)")
    g.add_argument("--context", default=d, help="the kubeconfig context to use")
    g.add_argument("--kubeconfig", default=d, help="path to the kubeconfig file")
    g.add_argument("--as", dest="as_user", default=d, metavar="USER", help="impersonate USER")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser, and each command's sub-parser by name."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Profile, probe and trace live pods with tracecar's agent.",
        epilog=(
            "exit codes: 0 ok, 1 failed, 2 usage, 3 not found, 4 forbidden, 5 no agent, "
            "6 unsupported (see docs/plugin.md)"
        ),
    )
    _globals(parser, top=True)
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    by_name = {}
    for cmd in COMMANDS:
        p = subs.add_parser(
            cmd.name,
            help=cmd.help,
            description=cmd.help,
            epilog=f"example:\n  {cmd.example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _globals(p, top=False)
        cmd.flags(p)
        by_name[cmd.name] = p
    return parser, by_name


def _invocation(ns: argparse.Namespace) -> Invocation:
    command = next(c for c in COMMANDS if c.name == ns.command)
    kube = KubeFlags(
        kubeconfig=ns.kubeconfig, context=ns.context, namespace=ns.namespace, as_user=ns.as_user
    )
    return Invocation(command=command, kube=kube, options=command.complete(ns))


def complete(argv: list[str]) -> Invocation:
    """argv -> the invocation; a bad flag combination raises :class:`UsageError`
    (argparse's own errors exit 2 with the usage, as always)."""
    return _invocation(build_parser()[0].parse_args(argv))


def parse(argv: list[str]) -> Invocation:
    """:func:`complete`, with a :class:`UsageError` shown as argparse shows its own:
    the command's usage, the message, exit 2."""
    parser, subparsers = build_parser()
    ns = parser.parse_args(argv)
    try:
        return _invocation(ns)
    except UsageError as e:
        subparsers[ns.command].error(e.message + (f" ({e.hint})" if e.hint else ""))
