"""perf.data -> folded stacks: ``perf script`` streamed straight into the collapser.

This module owns the one ``perf script`` invocation the agent uses (its argv is
:func:`perf_script_argv`) and the streaming glue: perf resolves symbols on one
core while :class:`~tracecar_formats.collapse.Collapser` folds on the other, so
post-processing costs little more than ``perf script`` itself (see
bench/postprocess_bench.py). The child runs through :mod:`agent._proc`: argv
list, timeout, always reaped, perf's own stderr in the error.

Fields: stackcollapse needs comm, pid and tid (the root frame and ``--pid``/``--tid``),
ip, sym and dso (the frames); ``event`` keeps samples of other events apart when
the recording has several. Time and period are left out on purpose: less text
to print and parse, every event line repeats (so its parse is cached), and
every sample weighs 1, so folded totals are sample counts, equal to
``perf report``'s sample totals (pprof and speedscope multiply by the period).
``--no-inline`` because inline resolution runs addr2line and takes minutes on big
binaries.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from agent._proc import Child, ToolFailed, ToolTimeout, drain_tail, tool_message
from tracecar_formats.collapse import CollapseOptions, Collapser, StackSymbolizer

__all__ = ["PERF_SCRIPT_FIELDS", "perf_data_to_folded", "perf_script_argv"]

PERF_SCRIPT_FIELDS = "comm,pid,tid,event,ip,sym,dso"
_CHUNK = 1 << 20
_STDERR_KEEP = 64 * 1024
_BATCH_WAIT = 0.002  # s; a 1 MiB pipe holds ~7 ms of perf script output


def perf_script_argv(
    perf_data: Path, *, perf: str = "perf", extra_args: Sequence[str] = ()
) -> list[str]:
    """The exact ``perf script`` command the agent post-processes with."""
    return [
        perf,
        "script",
        "-i",
        str(perf_data),
        "--no-inline",
        "-F",
        PERF_SCRIPT_FIELDS,
        *extra_args,
    ]


def _pump(fd: int, collapser: Collapser) -> None:
    # Blocking reads in a worker thread: the read releases the GIL, chunks are
    # as big as the pipe holds, and the event loop stays free between chunks.
    # Ends at EOF, which killing perf guarantees (nobody else holds the write end).
    while chunk := os.read(fd, _CHUNK):
        collapser.feed(chunk)
        if len(chunk) < _CHUNK // 4:
            # Let the pipe fill: one big read instead of a wake-up per small
            # write of perf's stdio saves context switches on both sides.
            time.sleep(_BATCH_WAIT)


async def perf_data_to_folded(
    perf_data: Path,
    *,
    options: CollapseOptions = CollapseOptions(),  # noqa: B008
    timeout: float,
    perf: str = "perf",
    extra_args: Sequence[str] = (),
    symbolizer: StackSymbolizer | None = None,
) -> dict[str, int]:
    """Run ``perf script`` on ``perf_data`` and collapse its output as it streams.

    ``symbolizer``: names what perf cannot (stripped Go, separate debug files) and puts
    back frameless leaves' callers (:class:`~tracecar_formats.collapse.StackSymbolizer`).

    Raises :class:`agent._proc.ToolTimeout` (perf killed and reaped) after
    ``timeout`` seconds, :class:`agent._proc.ToolFailed` with perf's own message
    when it exits non-zero, :class:`agent._proc.ToolNotFound` without perf.
    """
    argv = perf_script_argv(perf_data, perf=perf, extra_args=extra_args)
    collapser = Collapser(options, symbolizer=symbolizer)
    # Our own pipe rather than asyncio's stream: no copies through a StreamReader
    # buffer, and a 1 MiB pipe so perf rarely waits for us.
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, _CHUNK)
    try:
        try:
            child = await Child.start(argv, stdout=write_fd)
        finally:
            os.close(write_fd)
    except BaseException:
        os.close(read_fd)
        raise
    errors = asyncio.ensure_future(drain_tail(child.proc.stderr, keep=_STDERR_KEEP))
    pump = asyncio.ensure_future(asyncio.to_thread(_pump, read_fd, collapser))
    try:
        async with asyncio.timeout(timeout):
            await asyncio.shield(pump)
            stderr = await errors
            rc = await child.wait()
    except TimeoutError:
        await child.stop(signal.SIGKILL, grace=0)
        raise ToolTimeout(
            f"perf script did not finish within {timeout:g} s on {perf_data.name}", argv=argv
        ) from None
    finally:
        if child.returncode is None:
            await child.stop(signal.SIGKILL, grace=0)
        if not errors.done():
            errors.cancel()
            await asyncio.wait({errors})
        # perf is gone, so the pump meets EOF: wait for it before closing its fd.
        with contextlib.suppress(BaseException):
            await asyncio.shield(pump)
        os.close(read_fd)
    if rc != 0:
        err = stderr.decode("utf-8", "replace")
        raise ToolFailed(
            f"{os.path.basename(argv[0])} script failed: {tool_message(err, rc)}",
            argv=argv,
            returncode=rc,
            stderr=err,
        )
    return collapser.finish()
