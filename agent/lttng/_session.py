"""One LTTng session as the agent keeps it: its names, bounds, state and counters.

A :class:`Session` is the agent's record of a session it created in the
daemon (``lttng_name``), with its files under ``dir``; :func:`dir_size` is how
the watchdog and the views measure them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from agent.lttng._model import SessionRequest, State


@dataclass
class Session:
    id: str
    name: str
    lttng_name: str
    request: SessionRequest
    dir: Path
    created_at: float
    expires_at: float
    max_size_bytes: int
    state: State = "created"
    started_at: float | None = None
    stopped_at: float | None = None
    snapshots: int = 0
    rotations: int = 0
    message: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    count_cache: tuple[tuple[int, float], int] | None = None
    discarded_counted: int = 0  # of the daemon's discarded events, what the metrics have

    @property
    def output(self) -> Path:
        return self.dir / "trace"

    @property
    def ever_started(self) -> bool:
        return self.started_at is not None


def dir_size(path: Path) -> tuple[int, float]:
    """Bytes under ``path`` and the newest mtime (a cheap cache key)."""
    total = 0
    newest = 0.0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                st = os.stat(os.path.join(root, f))
                total += st.st_size
                newest = max(newest, st.st_mtime)
    return total, newest
