"""One sink: its spool, the task that delivers it to the store, and its state.

Producers only ever append to the spool (:meth:`Sink.put_bytes`, :meth:`Sink.put_file`,
a file write in a worker thread), so a store that is down or slow never blocks a
profile, a request or the event loop. One delivery task per sink sends the oldest
item, then the next. A failure is classified by the sender (:class:`SendError`):

- ``transient`` (connection refused, timeout, 5xx, 429): the item stays; retried
  after a backoff doubling from 1 s to 60 s with jitter (half fixed, half random,
  so a fleet that lost its store does not come back in step);
- ``config`` (wrong credentials, unknown bucket, no permission): the item stays,
  the sink is ``failing`` at once, retried on the same backoff so a fixed Secret
  recovers without a restart;
- ``rejected`` (the store refuses this payload: too old, malformed, too large):
  the item is dropped and counted; the next one goes.

States as ``/capabilities`` shows them: ``disabled`` (not configured), ``ok``
(the last attempt worked, or none failed yet), ``retrying`` (fewer than
:data:`FAILING_AFTER` failures in a row), ``failing`` (more, or a configuration
error). ``last_error`` says what went wrong in words.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from agent.sinks._spool import DropReason, Item, Spool

log = logging.getLogger(__name__)

SinkState = Literal["ok", "retrying", "failing", "disabled"]
ErrorKind = Literal["transient", "config", "rejected"]
FAILING_AFTER = 3
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0


class SinkStatus(BaseModel):
    """A configured store's sink as ``/capabilities`` shows it, and the store's own
    fields (its sender's ``describe()``: Pyroscope's ``url``, ``tenant``, ``auth``; S3's
    ``bucket``, ``endpoint``, ``region``, ``path_style``), hence ``additionalProperties``."""

    model_config = ConfigDict(extra="allow")
    configured: Literal[True]
    state: SinkState
    last_success: str | None = Field(description="when the last item went (ISO 8601, UTC)")
    last_error: str | None = Field(description="what went wrong last, in words")
    last_error_at: str | None
    queued_bytes: int = Field(description="in the spool, waiting for the store")
    queued_items: int
    dropped: int = Field(description="items given up: spool full, too old, or rejected")
    sent: int
    consecutive_failures: int


class SendError(Exception):
    def __init__(self, message: str, *, kind: ErrorKind) -> None:
        super().__init__(message)
        self.kind = kind


class Sender(Protocol):
    """What a store's client offers a sink: send one item, describe the target."""

    name: str

    async def send(self, item: Item) -> None: ...

    def describe(self) -> dict[str, object]: ...

    async def close(self) -> None: ...


def backoff_s(failures: int, *, rng: Callable[[], float] = random.random) -> float:
    """The wait before retry number ``failures`` (1, 2, ...): equal jitter over a
    doubling ceiling, never below half of it."""
    ceiling: float = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** max(failures - 1, 0))
    return ceiling / 2 + rng() * ceiling / 2


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


class Sink:
    def __init__(
        self,
        sender: Sender,
        spool_dir: Path,
        *,
        max_bytes: int,
        max_age_s: float,
        on_drop: Callable[[str, DropReason], None],
        on_sent: Callable[[str, int], None],
    ) -> None:
        self.sender = sender
        self.name = sender.name
        self._on_drop = on_drop
        self._on_sent = on_sent
        self.spool = Spool(
            spool_dir, max_bytes=max_bytes, max_age_s=max_age_s, on_drop=self._dropped
        )
        self.failures = 0
        self.last_kind: ErrorKind | None = None
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.dropped = 0
        self.sent = 0
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()  # set after every attempt (the flush waits on it)
        self._task: asyncio.Task[None] | None = None
        self._waiters: dict[str, asyncio.Future[bool]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flushing = False
        self._sending = False  # between taking an item and its bookkeeping
        self._outcomes: OrderedDict[str, bool] = OrderedDict()  # the last items' fates

    # --- life -----------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        left = await asyncio.to_thread(self.spool.load)
        if left:
            log.info(
                "items left in the spool by a previous run",
                extra={"fields": {"sink": self.name, "items": left}},
            )
        self._task = asyncio.create_task(self._deliver(), name=f"sink-{self.name}")

    async def flush_and_stop(self, budget_s: float) -> None:
        """Shutdown: send what is spooled for at most ``budget_s`` (no long backoff), then
        stop. What is left stays on disk for the next start."""
        self._flushing = True
        self._wake.set()
        deadline = time.monotonic() + budget_s
        while (len(self.spool) or self._sending) and self.last_kind != "config":
            # Woken by each delivery or failure (and every 0.5 s, in case one came between
            # the check and the clear); bounded by what is left of the budget.
            self._progress.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), min(left, 0.5))
        if len(self.spool):
            log.warning(
                "not sent at shutdown; kept in the spool",
                extra={
                    "fields": {
                        "sink": self.name,
                        "items": len(self.spool),
                        "bytes": self.spool.queued_bytes,
                        "why": self.last_error or "the flush budget ran out",
                    }
                },
            )
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_result(False)
        await self.sender.close()

    # --- producers ------------------------------------------------------------------
    async def put_bytes(self, payload: bytes, meta: dict[str, Any]) -> Item:
        item = await asyncio.to_thread(self.spool.put_bytes, payload, meta)
        self._wake.set()
        return item

    async def put_file(self, path: Path, meta: dict[str, Any]) -> Item:
        item = await asyncio.to_thread(self.spool.put_file, path, meta)
        self._wake.set()
        return item

    async def delivered(self, item: Item, timeout_s: float) -> bool:
        """Wait (bounded) until ``item`` is stored; False if it is still spooled (or lost)."""
        if item.id in self._outcomes:
            return self._outcomes[item.id]
        fut = self._waiters.setdefault(item.id, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        except TimeoutError:
            return False
        finally:
            if fut.done():
                self._waiters.pop(item.id, None)

    @property
    def healthy(self) -> bool:
        return self.failures == 0

    # --- what /capabilities shows ---------------------------------------------------
    @property
    def state(self) -> SinkState:
        if self.failures == 0:
            return "ok"
        if self.failures >= FAILING_AFTER or self.last_kind == "config":
            return "failing"
        return "retrying"

    def status(self) -> SinkStatus:
        return SinkStatus(
            configured=True,
            state=self.state,
            last_success=_iso(self.last_success),
            last_error=self.last_error,
            last_error_at=_iso(self.last_error_at),
            queued_bytes=self.spool.queued_bytes,
            queued_items=len(self.spool),
            dropped=self.dropped,
            sent=self.sent,
            consecutive_failures=self.failures,
            **self.sender.describe(),
        )

    # --- delivery ---------------------------------------------------------------------
    def _dropped(self, item: Item, reason: DropReason) -> None:
        # Called from worker threads (spool puts) and the loop: only counters here.
        self.dropped += 1
        self._on_drop(self.name, reason)
        if reason in ("spool_full", "too_old"):
            log.warning(
                "dropped an item",
                extra={
                    "fields": {
                        "sink": self.name,
                        "item": item.id,
                        "reason": reason,
                        "bytes": item.size,
                    }
                },
            )
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._settle, item.id, False)

    def _settle(self, item_id: str, ok: bool) -> None:
        self._outcomes[item_id] = ok
        while len(self._outcomes) > 1024:
            self._outcomes.popitem(last=False)
        fut = self._waiters.get(item_id)
        if fut is not None and not fut.done():
            fut.set_result(ok)

    def _fail(self, e: SendError) -> None:
        self._progress.set()
        self.failures += 1
        self.last_kind = e.kind
        if self.last_error != str(e) or self.failures in (1, FAILING_AFTER):
            log.warning(
                "sending failed",
                extra={
                    "fields": {
                        "sink": self.name,
                        "error": str(e),
                        "kind": e.kind,
                        "failures": self.failures,
                    }
                },
            )
        self.last_error = str(e)
        self.last_error_at = time.time()

    async def _pause(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _deliver(self) -> None:
        while True:
            await asyncio.to_thread(self.spool.expire)
            item = self.spool.oldest()
            if item is None:
                self._wake.clear()
                if self.spool.oldest() is None:
                    await self._wake.wait()
                continue
            self._sending = True
            try:
                await self.sender.send(item)
            except asyncio.CancelledError:
                raise
            except SendError as e:
                self._sending = False
                if not self.spool.contains(item.id):
                    # Evicted (the spool full: counted as a drop) or expired while it was
                    # being sent, its file gone: what failed says nothing of the store.
                    continue
                self._fail(e)
                if e.kind == "rejected":
                    await asyncio.to_thread(self.spool.drop, item, "rejected")
                    continue
                wait = backoff_s(self.failures)
                await self._pause(0.5 if self._flushing else wait)
                continue
            except Exception as e:  # a sender bug must not end delivery
                self._sending = False
                log.exception(
                    "sending failed", extra={"fields": {"sink": self.name, "item": item.id}}
                )
                what = f"unexpected error: {type(e).__name__}: {e}"
                self._fail(SendError(what, kind="transient"))
                await self._pause(backoff_s(self.failures))
                continue
            await asyncio.to_thread(self.spool.remove, item)
            if self.failures:
                log.info(
                    "delivering again",
                    extra={"fields": {"sink": self.name, "failures": self.failures}},
                )
            self.failures = 0
            self.last_kind = None
            self.last_success = time.time()
            self.sent += 1
            self._on_sent(self.name, item.size)
            self._settle(item.id, True)
            self._sending = False
            self._progress.set()
