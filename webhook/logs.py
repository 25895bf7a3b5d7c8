"""The webhook's log lines: servicelog's format (shared with the agent), buffered.

Lines are written to a buffer and flushed every half second (by the server's
:func:`flush_periodically` task), at once for warnings and errors, and at exit.
Measured: a flushed write per review was a fifth of the webhook's CPU per request.
"""

from __future__ import annotations

import logging
from typing import Final

import servicelog

LOGGER: Final = "tracecar.webhook"
ACCESS_LOGGER: Final = "tracecar.webhook.access"
_logger: Final = logging.getLogger(LOGGER)
"""Looked up once: ``logging.getLogger`` takes the logging module's lock on every call."""

flush_logs = servicelog.flush
flush_periodically = servicelog.flush_periodically


def configure_logging(level: str, fmt: servicelog.LogFormat = "json") -> None:
    """Every logger of the process (ours, uvicorn's) writes `fmt` lines to stderr."""
    servicelog.configure(level=level, fmt=fmt, buffered=True)


def log_review(fields: dict[str, object]) -> None:
    """The one line per review: the same shape as every other line, written straight
    into the handler's buffer (see :func:`servicelog.emit`)."""
    servicelog.emit(_logger, "review", fields)


def get_logger() -> logging.Logger:
    return _logger
