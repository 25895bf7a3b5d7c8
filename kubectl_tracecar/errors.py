"""The plugin's errors, each with the exit code it ends the command with.

Exit codes (documented in docs/plugin.md, stable for scripts):

=====  ==========================================================================
0      success
1      the operation failed (the agent or a tool said why)
2      usage: a flag or a target that cannot be parsed
3      not found: no such pod, container, Deployment or file, or no pod matches
4      forbidden: RBAC or Pod Security refused (the message names what is missing)
5      no agent: the pod has no tracecar agent and none could be attached
6      unsupported: the cluster or pod cannot do this (too old, not running)
=====  ==========================================================================
"""

from __future__ import annotations

OK = 0
FAILED = 1
USAGE = 2
NOT_FOUND = 3
FORBIDDEN = 4
NO_AGENT = 5
UNSUPPORTED = 6


class PluginError(Exception):
    """A failure to report in one line (no traceback), with its exit code."""

    exit_code = FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(PluginError):
    exit_code = USAGE


class NotFound(PluginError):
    exit_code = NOT_FOUND


class Forbidden(PluginError):
    exit_code = FORBIDDEN


class NoAgent(PluginError):
    exit_code = NO_AGENT


class Unsupported(PluginError):
    exit_code = UNSUPPORTED


class AgentFailed(PluginError):
    """The agent answered with an error (its message is passed on as it is)."""

    exit_code = FAILED

    def __init__(self, message: str, *, status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
