"""Stack snapshots: every thread's stack of one process, now, in its runtime's terms.

Public surface: :class:`Stacks` (built by :mod:`agent.app`; stateless but for a
lock per process), the answer's model :class:`StackSnapshot`, and the request's
``RequestedRuntime`` and ``Format``.

Inside::

    _model     the answer's shapes (pydantic) and the request's literals
    _plan      which tool, which argv (pure): py-spy, jattach or gdb, and why those
    _parse     each tool's output into threads and frames (pure)
    _service   Stacks: checks the target, runs the tool (timeout, reaped, target resumed),
               turns what went wrong into 404/409/502/503/504
"""

from agent.stacks._model import Format, RequestedRuntime, StackSnapshot
from agent.stacks._service import Stacks

__all__ = ["Format", "RequestedRuntime", "StackSnapshot", "Stacks"]
