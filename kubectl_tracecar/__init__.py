"""``kubectl tracecar``: profile, probe and trace live pods from the terminal.

The shape of the package:

* :mod:`._cli` parses the command line (kubectl's flags and target forms);
* :mod:`._targets` turns ``POD``, ``pod/NAME``, ``deploy/NAME``, ``-l`` into a target;
* :mod:`._pods` reads a pod's JSON: where its agent is, its port and token;
* :mod:`._attach` renders the ephemeral agent container (the webhook's capabilities);
* :mod:`._kube` is the only module that talks to the Kubernetes API;
* :mod:`._forward` port-forwards through kubectl; :mod:`._agent` is the agent's client;
* :mod:`._merge` and :mod:`._output` shape results; :mod:`._commands` runs each command;
* :mod:`._diff` compares two local folded files (``diff``: no cluster, no kubeconfig).

Errors are :class:`~kubectl_tracecar.errors.PluginError` with stable exit codes.
"""

from kubectl_tracecar.__main__ import main
from kubectl_tracecar.errors import PluginError

__all__ = ["PluginError", "main"]
