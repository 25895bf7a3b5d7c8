"""The native NDJSON sink for babeltrace2 (``sink.tracecar.ndjson``): found or built.

``ndjson_sink.c`` (next to this module) is a babeltrace2 plugin writing one JSON
object per event, as fast as babeltrace2 writes its own text. :func:`locate`
returns a directory holding the built plugin: a prebuilt one
(``lttng_ndjson_plugin_dir``), else one compiled with gcc against
libbabeltrace2-dev into the agent's data directory, else ``None`` with the
reason; the Python converter of :mod:`._read` is used then.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent import _proc

SOURCE = Path(__file__).resolve().parent / "ndjson_sink.c"
PLUGIN = "babeltrace-plugin-tracecar.so"
HEADER = Path("/usr/include/babeltrace2/babeltrace.h")
BUILD_TIMEOUT_S = 120.0


async def _works(plugin_dir: Path) -> bool:
    """babeltrace2 loads the plugin and knows its sink."""
    try:
        await _proc.run(
            ["babeltrace2", f"--plugin-path={plugin_dir}", "help", "sink.tracecar.ndjson"],
            timeout=30,
        )
    except _proc.ProcError:
        return False
    return True


def _missing(prebuilt: Path | None, build_dir: Path) -> str | None:
    """Why the plugin cannot be had (None: it can); creates the build directory."""
    if prebuilt is not None:
        if (prebuilt / PLUGIN).exists():
            return None
        return f"lttng_ndjson_plugin_dir {prebuilt} holds no {PLUGIN}"
    if _proc.which("gcc") is None or not HEADER.exists() or not SOURCE.exists():
        return "gcc or libbabeltrace2-dev missing: converting babeltrace2's text in Python"
    build_dir.mkdir(parents=True, exist_ok=True)
    return None


async def locate(*, prebuilt: Path | None, build_dir: Path) -> tuple[Path | None, str]:
    """(directory to pass as --plugin-path, how it was found) or (None, why not)."""
    why = await asyncio.to_thread(_missing, prebuilt, build_dir)
    if why is not None:
        return None, why
    if prebuilt is not None:
        if await _works(prebuilt):
            return prebuilt, f"prebuilt in {prebuilt}"
        return None, f"babeltrace2 does not load {prebuilt / PLUGIN}"
    try:
        await _proc.build_shared_library(
            [str(SOURCE), "-lbabeltrace2"], build_dir / PLUGIN, timeout=BUILD_TIMEOUT_S
        )
    except _proc.ProcError as e:
        return None, f"building the native sink failed ({e}): converting in Python"
    if not await _works(build_dir):
        return None, "babeltrace2 does not load the built sink: converting in Python"
    return build_dir, f"built at start-up in {build_dir}"
