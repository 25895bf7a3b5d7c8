"""One structured log format for both tracecar services (the webhook and the agent).

Every line of a process, ours and uvicorn's (its access log replaced by
:class:`AccessLog`), is one object with ``ts`` (ISO 8601 UTC, milliseconds, ``Z``),
``level``, ``logger`` and ``msg``, plus the record's fields (``extra={"fields": {...}}``):
JSON by default (what log collectors expect), or plain text for a terminal.

- :func:`configure` installs the handler on the root logger (level, format, buffering).
- :func:`emit` writes one line of fields on the hot path (the webhook's review line).
- :class:`AccessLog` is the ASGI middleware writing one line per HTTP request.
- :class:`JsonFormatter`, :class:`TextFormatter` are the two formats.

A package of its own because the import-linter contract keeps ``webhook`` and ``agent``
independent of each other: both import this one, and it imports neither.
"""

from servicelog._access import ACCESS_FIELDS, AccessLog
from servicelog._format import BASE_KEYS, JsonFormatter, LogFormat, TextFormatter, timestamp
from servicelog._handler import configure, emit, flush, flush_periodically

__all__ = [
    "ACCESS_FIELDS",
    "BASE_KEYS",
    "AccessLog",
    "JsonFormatter",
    "LogFormat",
    "TextFormatter",
    "configure",
    "emit",
    "flush",
    "flush_periodically",
    "timestamp",
]
