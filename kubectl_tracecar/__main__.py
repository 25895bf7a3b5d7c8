"""``kubectl-tracecar``: the entry point kubectl runs as ``kubectl tracecar``.

Every :class:`PluginError` ends the command with one line on stderr (and a hint when
there is one) and its exit code; nothing prints a traceback at a user."""

from __future__ import annotations

import signal
import sys

from kubectl_tracecar import _cli
from kubectl_tracecar._kube import Kube
from kubectl_tracecar.errors import FAILED, PluginError


def _terminated(signum: int, frame: object) -> None:
    # Unwinds through every `with`: the port-forwards (in their own sessions, so a
    # terminal's Ctrl-C does not reach them) are stopped, not orphaned.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    inv = _cli.parse(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        # The kubeconfig is read when a command first needs the cluster (never by diff).
        kube = Kube(
            kubeconfig=inv.kube.kubeconfig,
            context=inv.kube.context,
            namespace=inv.kube.namespace,
            as_user=inv.kube.as_user,
        )
        return inv.command.run(kube, inv.options)
    except PluginError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
