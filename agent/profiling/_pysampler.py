"""The sampling allocation tracer for CPython (``pyalloc_sampler.c``): found or built.

Alloc profiles of Python processes load it into each target (:mod:`agent.profiling.pyalloc`
says how). :func:`locate` finds it as the LTTng service finds its native sink: a prebuilt
one (settings ``python_alloc_sampler_dir``: the image builds it in its build stage), else
one compiled at start-up with gcc (no Python headers needed: the library declares the
C API it uses) into the agent's data directory, else none and the reason, which
``/capabilities`` and the plans then say (alloc keeps the C-allocator view for Python).
:func:`current` answers what the last :func:`locate` found, for the pure planning path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from agent import _proc

log = logging.getLogger("agent.profiling")

SOURCE = Path(__file__).resolve().parent / "pyalloc_sampler.c"
LIBRARY = "tracecar-pyalloc.so"
BUILD_TIMEOUT_S = 120.0
_SYMBOL = b"tracecar_pyalloc_start"

_found: tuple[Path | None, str] = (None, "the sampler has not been looked for yet")
_done = False


def current() -> tuple[Path | None, str]:
    """(the library, how it was found) or (None, why there is none)."""
    return _found


def _check(path: Path) -> str | None:
    """Why ``path`` is not the sampler (None: it is)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"{path}: {e.strerror}"
    if not data.startswith(b"\x7fELF") or _SYMBOL not in data:
        return f"{path} is not tracecar's sampler (no {_SYMBOL.decode()})"
    return None


async def _build(build_dir: Path) -> tuple[Path | None, str]:
    if _proc.which("gcc") is None or not SOURCE.exists():
        return None, "no prebuilt sampler (python_alloc_sampler_dir) and no gcc to build it"
    await asyncio.to_thread(build_dir.mkdir, parents=True, exist_ok=True)
    # Two callers at once (start-up and a first profile) each build their own copy.
    out = build_dir / LIBRARY
    try:
        await _proc.build_shared_library([str(SOURCE)], out, timeout=BUILD_TIMEOUT_S)
    except _proc.ProcError as e:
        return None, f"building the sampler failed: {e}"
    why = await asyncio.to_thread(_check, out)
    return (None, why) if why else (out, f"built at start-up in {build_dir}")


async def locate(*, prebuilt: Path | None, build_dir: Path) -> tuple[Path | None, str]:
    """Find (or build, once) the sampler; what :func:`current` says from then on."""
    global _found, _done
    if _done:
        return _found
    if prebuilt is not None:
        lib = prebuilt / LIBRARY
        why = await asyncio.to_thread(_check, lib)
        found: tuple[Path | None, str] = (
            (None, f"python_alloc_sampler_dir: {why}") if why else (lib, f"prebuilt {lib}")
        )
    else:
        found = await _build(build_dir)
    _found, _done = found, True
    return found


class Search:
    """:func:`locate` as a background task of its service: started with it (a second of
    gcc must not hold the start-up), awaited by whatever needs the answer (the first
    alloc profile, ``/capabilities``), cancelled at shutdown. Never fatal: without the
    sampler, alloc keeps the C-allocator view for Python."""

    def __init__(self, *, prebuilt: Path | None, build_dir: Path) -> None:
        self.prebuilt, self.build_dir = prebuilt, build_dir
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._locate(), name="pyalloc-sampler")

    async def _locate(self) -> None:
        try:
            await locate(prebuilt=self.prebuilt, build_dir=self.build_dir)
        except Exception as e:
            log.warning("python alloc sampler unavailable", extra={"fields": {"error": str(e)}})

    async def ready(self) -> None:
        """The search done (started now if it was not)."""
        self.start()
        assert self._task is not None
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
