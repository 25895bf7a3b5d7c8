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
import os
import secrets
from pathlib import Path

from agent import _proc

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
    out, tmp = build_dir / LIBRARY, build_dir / f"{LIBRARY}.{secrets.token_hex(4)}.part"
    try:
        await _proc.run(
            ["gcc", "-O2", "-fPIC", "-shared", "-o", str(tmp), str(SOURCE)],
            timeout=BUILD_TIMEOUT_S,
        )
        os.replace(tmp, out)
    except _proc.ProcError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
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
