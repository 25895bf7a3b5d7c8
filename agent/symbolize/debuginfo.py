"""Separate debug files for stripped native objects: where they are, and fetching them.

Owns the search order for one stripped object, every path taken inside the target's
own filesystem (``/proc/PID/root``), as gdb and perf search:

1. the build-id path, ``/usr/lib/debug/.build-id/xx/rest.debug``;
2. ``.gnu_debuglink``: the named file next to the object, in its ``.debug/``
   directory, and under ``/usr/lib/debug/`` + the object's directory (its CRC32
   must match);
3. a debuginfod server, when ``TRACECAR_AGENT_DEBUGINFOD_URLS`` names some (the
   standard ``DEBUGINFOD_URLS`` meaning: space-separated base URLs, tried in order):
   ``GET URL/buildid/HEX/debuginfo``, kept in the agent's own cache directory under a
   size limit (oldest used first out), with a per-request timeout and a budget per
   profile so a server that is down or slow costs seconds, not the profile.

A candidate whose build-id differs from the object's is ignored (and said). Every
answer carries where the symbols came from, for the profile's notes.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DebugFile", "DebuginfodCache", "find_debug_file", "parse_urls"]

_BUILD_ID = re.compile(r"^[0-9a-f]{8,128}$")
_URL = re.compile(r"^https?://[^\s]+$")
_NEGATIVE_TTL_S = 300.0  # a build-id the servers do not have is not asked again for this long


@dataclass(frozen=True, slots=True)
class DebugFile:
    path: Path | None  # host path of the debug file; None: not found
    source: str  # "build-id path", "debuglink", "debuginfod", or "none"
    detail: str  # where exactly, or why not


def parse_urls(value: str) -> list[str]:
    """``DEBUGINFOD_URLS``: space-separated http(s) base URLs (others ignored)."""
    return [u.rstrip("/") for u in value.split() if _URL.match(u)]


def _build_id_of(path: Path) -> str | None:
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    from agent.symbolize._objects import read_build_id

    try:
        with path.open("rb") as f:
            return read_build_id(ELFFile(f))
    except (OSError, ELFError, ValueError):
        return None


def _crc32(path: Path) -> int | None:
    crc = 0
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                crc = zlib.crc32(chunk, crc)
    except OSError:
        return None
    return crc & 0xFFFFFFFF


class DebuginfodCache:
    """Debug files fetched from debuginfod servers, on the agent's disk, size-bounded."""

    def __init__(
        self, *, urls: list[str], directory: Path, max_bytes: int, timeout_s: float
    ) -> None:
        self.urls = urls
        self.directory = directory
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._missing: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def _path(self, build_id: str) -> Path:
        return self.directory / f"{build_id}.debug"

    def get(self, build_id: str, *, deadline: float) -> tuple[Path | None, str]:
        """The debug file of ``build_id`` (cached or fetched), or None and why not."""
        if not _BUILD_ID.match(build_id):
            return None, f"build-id {build_id!r} is not hex"
        cached = self._path(build_id)
        if cached.is_file():
            with contextlib.suppress(OSError):
                os.utime(cached)  # most recently used: evicted last
            return cached, "cached"
        with self._lock:
            seen = self._missing.get(build_id)
            if seen is not None and time.monotonic() - seen[0] < _NEGATIVE_TTL_S:
                return None, seen[1]
        reasons = []
        for url in self.urls:
            left = deadline - time.monotonic()
            if left <= 0.05:
                reasons.append(f"{url}: not asked, the profile's time for debuginfod ran out")
                continue
            ok, why = self._fetch(url, build_id, timeout=min(self.timeout_s, left))
            if ok:
                return cached, f"fetched from {url}"
            reasons.append(f"{url}: {why}")
        why = "; ".join(reasons) or "no debuginfod URL"
        with self._lock:
            self._missing[build_id] = (time.monotonic(), why)
        return None, why

    def _fetch(self, url: str, build_id: str, *, timeout: float) -> tuple[bool, str]:
        self.directory.mkdir(parents=True, exist_ok=True)
        part = self.directory / f"{build_id}.debug.{os.getpid()}.{threading.get_ident()}.part"
        limit = self.max_bytes
        # httpx only when a debuginfod server is configured (~7 MB of RSS otherwise paid
        # by every agent, attached ones in small pods included)
        import httpx

        try:
            with (
                httpx.Client(timeout=timeout, follow_redirects=True) as client,
                client.stream("GET", f"{url}/buildid/{build_id}/debuginfo") as resp,
            ):
                if resp.status_code != 200:
                    return False, f"HTTP {resp.status_code}"
                size = 0
                with part.open("wb") as out:
                    for chunk in resp.iter_bytes(1 << 20):
                        size += len(chunk)
                        if size > limit:
                            raise ValueError(f"larger than the cache ({limit} bytes)")
                        out.write(chunk)
            if _build_id_of(part) != build_id:
                return False, "the file served has another build-id (ignored)"
            os.replace(part, self._path(build_id))
        except (httpx.HTTPError, OSError, ValueError) as e:
            return False, (str(e) or type(e).__name__)[:300]
        finally:
            with contextlib.suppress(OSError):
                part.unlink()
        self._evict()
        return True, "fetched"

    def _evict(self) -> None:
        """Oldest-used files out until the cache fits its limit."""
        entries = []
        with contextlib.suppress(OSError):
            for p in self.directory.glob("*.debug"):
                with contextlib.suppress(OSError):
                    st = p.stat()
                    entries.append((st.st_mtime, st.st_size, p))
        total = sum(e[1] for e in entries)
        for _mtime, size, p in sorted(entries):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(OSError):
                p.unlink()
                total -= size


def _inside(root: Path, path: str) -> Path:
    return Path(str(root) + path)


def find_debug_file(
    root: Path,
    object_path: str,
    *,
    build_id: str | None,
    debuglink: tuple[str, int] | None,
    debuginfod: DebuginfodCache | None,
    deadline: float,
) -> tuple[DebugFile, list[str]]:
    """Where the debug file of a stripped object is (see the module docstring), and
    notes on candidates that were ignored. ``root``: the target's ``/proc/PID/root``;
    ``object_path``: the object's path as the target sees it."""
    ignored: list[str] = []
    if build_id:
        rel = f"/usr/lib/debug/.build-id/{build_id[:2]}/{build_id[2:]}.debug"
        cand = _inside(root, rel)
        if cand.is_file():
            found = _build_id_of(cand)
            if found == build_id:
                return DebugFile(cand, "build-id path", rel), ignored
            ignored.append(f"{rel} has build-id {found or 'none'}, not {build_id}: ignored")
    if debuglink is not None:
        name, crc = debuglink
        if "/" not in name:
            d = os.path.dirname(object_path)
            for rel in (f"{d}/{name}", f"{d}/.debug/{name}", f"/usr/lib/debug{d}/{name}"):
                cand = _inside(root, rel)
                if rel == object_path or not cand.is_file():
                    continue
                if _crc32(cand) != crc:
                    ignored.append(f"{rel} (debuglink) has another CRC32: ignored")
                    continue
                found = _build_id_of(cand)
                if build_id and found and found != build_id:
                    ignored.append(f"{rel} (debuglink) has build-id {found}: ignored")
                    continue
                return DebugFile(cand, "debuglink", rel), ignored
    if debuginfod is not None and debuginfod.urls and build_id:
        path, why = debuginfod.get(build_id, deadline=deadline)
        if path is not None:
            return DebugFile(path, "debuginfod", why), ignored
        return DebugFile(None, "none", f"debuginfod: {why}"), ignored
    if not build_id:
        return DebugFile(None, "none", "no build-id and no debug file found"), ignored
    why = "no debug file at the build-id path" + (" or by debuglink" if debuglink else "")
    if debuginfod is None or not debuginfod.urls:
        why += "; no debuginfod configured (TRACECAR_AGENT_DEBUGINFOD_URLS)"
    return DebugFile(None, "none", why), ignored
