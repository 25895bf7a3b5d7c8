"""``kubectl tracecar``: profile, probe and trace live pods from the terminal.

The shape of the package:

* :mod:`._cli` builds the command line from the commands (kubectl's flags and target
  forms) and completes it into one command's options;
* :mod:`.commands` holds the commands, one module each (flags -> options -> run), and
  what they share: :mod:`.commands._base` (Command, Wire, targets, formats) and
  :mod:`.commands._reach` (pods of a target, reaching or attaching their agent);
* :mod:`._targets` turns ``POD``, ``pod/NAME``, ``deploy/NAME``, ``-l`` into a target;
* :mod:`._pods` reads a pod's JSON: where its agent is, its port and token;
* :mod:`._attach` renders the ephemeral agent container (the webhook's capabilities);
* :mod:`._kube` is the only module that talks to the Kubernetes API (loaded lazily);
* :mod:`._forward` port-forwards through kubectl; :mod:`._agent` is the agent's client;
* :mod:`._merge`, :mod:`._output` and :mod:`._sinks` shape results.

Errors are :class:`~kubectl_tracecar.errors.PluginError` with stable exit codes.
"""

from kubectl_tracecar.errors import PluginError


def main(argv: list[str] | None = None) -> int:
    """``kubectl tracecar ARGV...`` (the console script runs ``__main__.main``). Imported
    on call, so that importing one module of the package (``_attach`` for the e2e stage)
    loads no command, and ``python -m kubectl_tracecar`` runs ``__main__`` only once."""
    from kubectl_tracecar.__main__ import main as run

    return run(argv)


__all__ = ["PluginError", "main"]
