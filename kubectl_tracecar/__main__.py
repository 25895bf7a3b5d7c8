"""``kubectl-tracecar``: the entry point kubectl runs as ``kubectl tracecar``.

Every :class:`PluginError` ends the command with one line on stderr (and a hint when
there is one) and its exit code; nothing prints a traceback at a user."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable

from kubectl_tracecar import _cli, _commands, _diff, _dotnet, _memory, _recorder
from kubectl_tracecar.errors import FAILED, PluginError

_COMMANDS = {
    "status": _commands.cmd_status,
    "ps": _commands.cmd_ps,
    "profile": _commands.cmd_profile,
    "stack": _commands.cmd_stack,
    "probe": _commands.cmd_probe,
    "trace": _commands.cmd_trace,
    "attach": _commands.cmd_attach,
    "dump": _dotnet.cmd_dump,
    "counters": _dotnet.cmd_counters,
    "recorder": _recorder.cmd_recorder,
    "memory": _memory.cmd_memory,
    "heapdump": _memory.cmd_heapdump,
}
# Commands on local files only: no kubeconfig is loaded, so they work without a cluster.
_LOCAL: dict[str, Callable[[argparse.Namespace], int]] = {"diff": _diff.cmd_diff}


def _terminated(signum: int, frame: object) -> None:
    # Unwinds through every `with`: the port-forwards (in their own sessions, so a
    # terminal's Ctrl-C does not reach them) are stopped, not orphaned.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _cli.parse(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        if args.command in _LOCAL:
            return _LOCAL[args.command](args)
        from kubectl_tracecar._kube import Kube

        kube = Kube(
            kubeconfig=args.kubeconfig,
            context=args.context,
            namespace=args.namespace,
            as_user=args.as_user,
        )
        return _COMMANDS[args.command](kube, args)
    except PluginError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
