"""The commands of ``kubectl tracecar``, one module each, each built the way kubectl
builds its own: flags -> *Complete* (one frozen options object, every target,
duration and size parsed once) -> *Validate* -> *Run* (:mod:`._base`).

A command is one module defining ``COMMAND`` (a :class:`._base.Command`) plus one
line in :data:`COMMANDS` below; :mod:`kubectl_tracecar._cli` builds the parser from
that list, in its order (the order of ``--help``). Shared by the commands::

    _base    Command, Wire (a flag <-> the agent's request field), targets, formats
    _reach   pods of a target, the agent's client through a port-forward, processes,
             adding an agent (``attach`` and ``--attach``)

Modules here import neither httpx nor the kubernetes client at import time:
``--help`` loads only argparse and our own small modules.
"""

from __future__ import annotations

from typing import Any

from kubectl_tracecar.commands import (
    attach,
    counters,
    diff,
    dump,
    probe,
    profile,
    ps,
    recorder,
    stack,
    status,
    trace,
)
from kubectl_tracecar.commands._base import Command

COMMANDS: tuple[Command[Any], ...] = (
    status.COMMAND,
    ps.COMMAND,
    profile.COMMAND,
    stack.COMMAND,
    probe.COMMAND,
    trace.COMMAND,
    diff.COMMAND,
    dump.COMMAND,
    counters.COMMAND,
    recorder.COMMAND,
    attach.COMMAND,
)

__all__ = ["COMMANDS", "Command"]
