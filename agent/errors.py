"""The agent's own exceptions, and how they reach the client.

Library and tool errors are translated into these at the boundary of the module
that meets them; handlers never see a raw ``OSError`` or ``CalledProcessError``.
Every one becomes a JSON body ``{"detail": "..."}`` (plus optional fields)::

    AgentError                    500  (never raised directly)
     ├── Unauthorized             401  missing or wrong bearer token
     ├── Forbidden                403  disabled on this agent by its operator
     ├── NotFound                 404  unknown pid, job, probe, session, symbol
     ├── Conflict                 409  action in the wrong state; unavailable domain
     ├── Invalid                  422  a value out of range or not matching its pattern
     ├── TooMany                  429  a configured limit is reached
     ├── ToolError                502  a tool failed on its target: its own words
     ├── Unavailable              503  a tool is missing or not permitted here
     └── ToolTimedOut             504  a tool did not finish within its timeout

A tool's failure has one status in every capability, whoever meets it: the table
:data:`TOOL_STATUS` (httpx's ``map_exceptions`` is the model) maps the process
seam's exceptions (:mod:`agent._proc`) to these; :func:`from_tool` applies it, in
a module that adds its own words and in the app's handler for whatever reaches it
untranslated. So perf failing a profile, bpftrace failing to
attach a probe, lttng refusing to set up or act on a session, and py-spy failing a
stack snapshot are each a 502; a missing tool a 503; a hung one a 504. What the
*request* got wrong stays a 4xx even when a tool is the one that noticed (an LTTng
filter expression lttng cannot parse: 422).
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent import _proc


class AgentError(Exception):
    status_code: ClassVar[int] = 500

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, **self.extra}


class Unauthorized(AgentError):
    status_code = 401


class Forbidden(AgentError):
    status_code = 403


class NotFound(AgentError):
    status_code = 404


class Conflict(AgentError):
    status_code = 409


class Invalid(AgentError):
    status_code = 422

    def __init__(self, detail: str, *, field: str | None = None, **extra: Any) -> None:
        if field is not None:
            extra["field"] = field
        super().__init__(detail, **extra)


class TooMany(AgentError):
    status_code = 429


class ToolError(AgentError):
    """A tool we ran failed on its target (perf, bpftrace, lttng, py-spy, gdb...)."""

    status_code = 502


class Unavailable(AgentError):
    status_code = 503


class ToolTimedOut(AgentError):
    status_code = 504


TOOL_STATUS: dict[type[_proc.ProcError], type[AgentError]] = {
    _proc.ToolNotFound: Unavailable,  # not installed here: like any unavailable capability
    _proc.ToolTimeout: ToolTimedOut,
    _proc.ToolFailed: ToolError,
    _proc.ProcError: ToolError,  # the base: a tool that misbehaved otherwise
}
"""Which of ours each of the process seam's exceptions becomes (most specific first)."""


def from_tool(exc: _proc.ProcError, detail: str | None = None, **extra: Any) -> AgentError:
    """``exc`` as the agent's error of its kind (:data:`TOOL_STATUS`), with ``detail``
    (default: the tool's own message) and the tool's name."""
    kind = next(v for k, v in TOOL_STATUS.items() if isinstance(exc, k))
    tool = exc.argv[0].rsplit("/", 1)[-1] if exc.argv else None
    return kind(detail if detail is not None else str(exc), **{"tool": tool, **extra})
