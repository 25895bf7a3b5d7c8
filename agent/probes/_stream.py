"""A probe's events: a bounded buffer, a rate limit with drop counts, fan-out to readers.

Memory is bounded whatever the traced app does: events beyond the rate limit
(per second) are counted as ``drops`` and never stored; the buffer keeps the
last ``capacity`` events; each reader has a cursor into it, so a slow reader
costs nothing: when the buffer moves past its cursor the reader is told how
many it ``missed``. Readers come and go freely (a client that disconnects just
drops its cursor); the probe's lifetime does not depend on them.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Batch:
    """What a reader gets per wake-up: new events, and what it lost since last time."""

    events: list[dict[str, Any]]
    missed: int
    drops: int
    closed: bool


class EventStream:
    def __init__(self, *, capacity: int, rate: int) -> None:
        self.capacity = capacity
        self.rate = rate
        self._buf: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._first_seq = 0  # seq of _buf[0]
        self.published = 0  # events accepted (next seq)
        self.drops = 0  # events refused by the rate limit
        self._window = 0.0
        self._in_window = 0
        self.closed = False
        self._wake = asyncio.Event()
        self.readers = 0

    def publish(self, event: dict[str, Any]) -> bool:
        """Keep ``event`` unless this second's budget is spent; then count a drop."""
        now = time.monotonic()
        if now - self._window >= 1.0:
            self._window = now
            self._in_window = 0
        if self._in_window >= self.rate:
            self.drops += 1
            return False
        self._in_window += 1
        event["seq"] = self.published
        if len(self._buf) == self.capacity:
            self._first_seq += 1
        self._buf.append(event)
        self.published += 1
        self._wake.set()
        return True

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    def _since(self, cursor: int) -> tuple[list[dict[str, Any]], int, int]:
        missed = max(0, self._first_seq - cursor)
        start = max(cursor, self._first_seq) - self._first_seq
        n = len(self._buf) - start
        if n <= 0:
            return [], missed, max(cursor, self._first_seq)
        # deque slicing by index is O(n) from the nearer end; new events sit at the right.
        events = [self._buf[i] for i in range(start, len(self._buf))]
        return events, missed, self._first_seq + len(self._buf)

    async def read(self, *, from_start: bool = True, max_batch: int = 4096) -> AsyncIterator[Batch]:
        """Batches of events from the oldest retained one (or from now) until the probe ends."""
        cursor = self._first_seq if from_start else self.published
        self.readers += 1
        try:
            while True:
                wake = self._wake
                events, missed, nxt = self._since(cursor)
                if len(events) > max_batch:
                    events = events[:max_batch]
                    nxt = events[-1]["seq"] + 1
                if events or missed:
                    cursor = nxt
                    yield Batch(events, missed, self.drops, False)
                    continue
                if self.closed:
                    yield Batch([], 0, self.drops, True)
                    return
                wake.clear()
                # Re-check after clear: a publish between _since and clear must not be lost.
                if self.published > cursor or self.closed:
                    continue
                try:
                    await asyncio.wait_for(wake.wait(), timeout=15)
                except TimeoutError:
                    yield Batch([], 0, self.drops, False)  # a heartbeat for idle streams
        finally:
            self.readers -= 1
