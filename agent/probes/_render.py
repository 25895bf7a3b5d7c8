"""A probe's events on the wire: NDJSON lines or Server-Sent Events, ending with a summary.

:func:`render` follows a probe's :class:`~agent.probes._stream.EventStream`
from one reader's cursor, reports drops as they change, bounds the bytes it
sends, and closes with an ``end`` record; :func:`render_batch` is its hot path
(measured by ``bench/probes_bench.py``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from agent.probes._probe import Probe


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"))


def _fields(ev: dict[str, Any]) -> str:
    """``"k":v,...`` of one event: ints written directly (the hot case), the rest by json."""
    return ",".join(
        f'"{k}":{v}' if type(v) is int else f'"{k}":{json.dumps(v, separators=(",", ":"))}'
        for k, v in ev.items()
    )


def render_batch(events: list[dict[str, Any]], *, sse: bool) -> str:
    """Hits as NDJSON lines (``{"type":"hit",...}``) or SSE frames (``event: hit``)."""
    if sse:
        return "".join(f"id: {ev['seq']}\nevent: hit\ndata: {{{_fields(ev)}}}\n\n" for ev in events)
    return "".join(f'{{"type":"hit",{_fields(ev)}}}\n' for ev in events)


async def render(probe: Probe, *, sse: bool, max_bytes: int) -> AsyncIterator[bytes]:
    sent = 0
    reported = (0, 0)

    def frame(kind: str, record: dict[str, Any]) -> str:
        if sse:
            seq = record.get("seq")
            head = f"id: {seq}\n" if seq is not None else ""
            return f"{head}event: {kind}\ndata: {_dumps(record)}\n\n"
        return _dumps({"type": kind, **record}) + "\n"

    end_reason: str | None = None
    async for batch in probe.stream.read():
        parts = [render_batch(batch.events, sse=sse)] if batch.events else []
        drops = (batch.drops + probe.lost, batch.missed)
        if batch.missed or drops[0] != reported[0]:
            reported = (drops[0], reported[1] + batch.missed)
            parts.append(frame("drops", {"drops": drops[0], "missed_by_this_reader": reported[1]}))
        if batch.closed:
            break
        if not parts:
            if sse:
                yield b": keep-alive\n\n"
            continue
        data = "".join(parts).encode()
        if sent + len(data) > max_bytes:
            end_reason = "byte limit of this stream reached"
            break
        sent += len(data)
        yield data
    final = probe.view()
    end = {
        "state": final.state,
        "reason": end_reason or final.reason,
        "hits": final.hits,
        "events": final.events,
        "drops": final.drops,
        "summary": final.summary,
    }
    yield frame("end", end).encode()
