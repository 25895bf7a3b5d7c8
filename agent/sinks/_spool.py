"""The on-disk spool of one sink: what waits for its store, bounded in bytes and age.

Owned here: the spool directory (``ID.data`` the payload, ``ID.json`` its metadata,
written in that order, each atomically, so a crash leaves either a whole item or
an orphan :meth:`Spool.load` removes), the in-memory index in arrival order, and
the bounds: putting an item beyond ``max_bytes`` drops the oldest first, and
items older than ``max_age_s`` are dropped unsent. Every drop is reported to
``on_drop`` with its reason, so it is counted.

Items survive the agent: a restarted agent (the same data directory: an emptyDir
outlives a container restart) loads and sends what the last one left.

Blocking file I/O: call ``put_*``, ``remove``, ``drop`` and ``load`` from a worker
thread (``asyncio.to_thread``); the index is guarded by a lock for that.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

DropReason = Literal["spool_full", "too_old", "rejected", "too_large"]
DROP_REASONS: tuple[DropReason, ...] = ("spool_full", "too_old", "rejected", "too_large")


class TooLarge(Exception):
    """An item larger than the whole spool: it could never be kept."""


@dataclass(frozen=True, slots=True)
class Item:
    id: str
    created_at: float
    size: int
    meta: dict[str, Any] = field(default_factory=dict)
    data: Path = Path()


class Spool:
    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        max_age_s: float,
        on_drop: Callable[[Item, DropReason], None] | None = None,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.on_drop = on_drop
        self._items: OrderedDict[str, Item] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    # --- reading the index (any thread) ---------------------------------------------
    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def oldest(self) -> Item | None:
        with self._lock:
            return next(iter(self._items.values()), None)

    def contains(self, item_id: str) -> bool:
        return item_id in self._items

    # --- blocking operations (a worker thread) ----------------------------------------
    def load(self) -> int:
        """Index what a previous run left (oldest first); remove half-written files."""
        self.directory.mkdir(parents=True, exist_ok=True)
        found: list[Item] = []
        for meta_path in self.directory.glob("*.json"):
            data = meta_path.with_suffix(".data")
            try:
                doc = json.loads(meta_path.read_text())
                item = Item(
                    id=meta_path.stem,
                    created_at=float(doc["created_at"]),
                    size=data.stat().st_size,
                    meta=dict(doc["meta"]),
                    data=data,
                )
            except (OSError, ValueError, KeyError, TypeError):
                self._unlink(meta_path.stem)
                continue
            found.append(item)
        known = {i.id for i in found}
        for leftover in self.directory.iterdir():
            if leftover.name.endswith(".part") or (
                leftover.suffix == ".data" and leftover.stem not in known
            ):
                with contextlib.suppress(OSError):
                    leftover.unlink()
        with self._lock:
            for item in sorted(found, key=lambda i: i.id):
                self._items[item.id] = item
                self._bytes += item.size
        self.expire()
        self._make_room(0)
        return len(found)

    def put_bytes(self, payload: bytes, meta: dict[str, Any]) -> Item:
        self._check_size(len(payload))
        item_id = self._new_id()
        data = self.directory / f"{item_id}.data"
        part = data.with_name(data.name + ".part")
        part.write_bytes(payload)
        os.replace(part, data)
        return self._index(item_id, data, len(payload), meta)

    def put_file(self, source: Path, meta: dict[str, Any]) -> Item:
        """Spool a file: a hard link when it is on the spool's filesystem (no copy, and
        the job that owns the file may delete or replace it meanwhile), else a copy."""
        size = source.stat().st_size
        self._check_size(size)
        item_id = self._new_id()
        data = self.directory / f"{item_id}.data"
        part = data.with_name(data.name + ".part")
        try:
            os.link(source, part)
        except OSError:
            shutil.copyfile(source, part)
        os.replace(part, data)
        return self._index(item_id, data, size, meta)

    def remove(self, item: Item) -> None:
        """Delivered: out of the spool."""
        if self._forget(item.id):
            self._unlink(item.id)

    def drop(self, item: Item, reason: DropReason) -> None:
        """Not delivered and never will be: out of the spool, and counted."""
        if self._forget(item.id):
            self._unlink(item.id)
            if self.on_drop is not None:
                self.on_drop(item, reason)

    def expire(self, now: float | None = None) -> int:
        horizon = (now if now is not None else time.time()) - self.max_age_s
        with self._lock:
            old = [i for i in self._items.values() if i.created_at < horizon]
        for item in old:
            self.drop(item, "too_old")
        return len(old)

    # --- internals ---------------------------------------------------------------------
    def _check_size(self, size: int) -> None:
        if size > self.max_bytes:
            raise TooLarge(
                f"{size} bytes is more than the whole spool holds ({self.max_bytes} bytes, "
                "TRACECAR_AGENT_SPOOL_MAX_BYTES)"
            )

    def _new_id(self) -> str:
        # Sortable by arrival: nanoseconds, then a random tail against same-tick collisions.
        self.directory.mkdir(parents=True, exist_ok=True)
        return f"{time.time_ns():020d}-{secrets.token_hex(4)}"

    def _index(self, item_id: str, data: Path, size: int, meta: dict[str, Any]) -> Item:
        item = Item(id=item_id, created_at=time.time(), size=size, meta=meta, data=data)
        meta_path = self.directory / f"{item_id}.json"
        part = meta_path.with_name(meta_path.name + ".part")
        part.write_text(json.dumps({"created_at": item.created_at, "meta": meta}))
        os.replace(part, meta_path)
        self._make_room(size)
        with self._lock:
            self._items[item_id] = item
            self._bytes += size
        return item

    def _make_room(self, incoming: int) -> None:
        while True:
            with self._lock:
                if self._bytes + incoming <= self.max_bytes or not self._items:
                    return
                oldest = next(iter(self._items.values()))
            self.drop(oldest, "spool_full")

    def _forget(self, item_id: str) -> bool:
        with self._lock:
            item = self._items.pop(item_id, None)
            if item is None:
                return False
            self._bytes -= item.size
            return True

    def _unlink(self, item_id: str) -> None:
        for suffix in (".json", ".data"):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / f"{item_id}{suffix}").unlink()
