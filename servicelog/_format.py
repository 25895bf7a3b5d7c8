"""The two line formats: JSON objects and ``key=value`` text, same content."""

from __future__ import annotations

import logging
import time
from typing import Final, Literal

import orjson

LogFormat = Literal["json", "text"]
BASE_KEYS: Final = ("ts", "level", "logger", "msg")
"""The keys every line has, first and in this order."""

_second: tuple[int, str] = (0, "")


def timestamp(t: float) -> str:
    """ISO 8601 UTC with milliseconds and ``Z``; the formatted second is cached (the
    webhook formats one per review)."""
    global _second
    sec = int(t)
    if _second[0] != sec:
        _second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{_second[1]}.{int((t - sec) * 1000):03d}Z"


def record_fields(record: logging.LogRecord) -> dict[str, object]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(record_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def _text_value(value: object) -> str:
    if isinstance(value, str) and value and not any(c.isspace() or c in '"=' for c in value):
        return value
    return orjson.dumps(value, default=str).decode()


class TextFormatter(logging.Formatter):
    """``2026-12-02T04:24:49.991Z info    agent.access: request method=GET path=/healthz``:
    the JSON line's content for a person at a terminal (tracebacks on their own lines)."""

    def format(self, record: logging.LogRecord) -> str:
        head = (
            f"{timestamp(record.created)} {record.levelname.lower():<7} "
            f"{record.name}: {record.getMessage()}"
        )
        fields = " ".join(f"{k}={_text_value(v)}" for k, v in record_fields(record).items())
        line = f"{head} {fields}" if fields else head
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line
