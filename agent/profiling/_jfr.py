"""Java allocation profiles by Java method: the JVM's own allocation sampling (JFR's
``jdk.ObjectAllocationSample``, JDK 16 and later), for the Java targets of an ``alloc``
profile, beside the C-allocator view bpftrace gives of the JVM's native memory.

Owned here: starting a flight recording in each JVM through jattach (``jcmd
JFR.start``, the ``profile`` settings: allocation samples throttled to 300 a second,
each weighted by the bytes it stands for), dumping it into the JVM's own /tmp at the
end, reading it through /proc/PID/root, stopping the recording and removing the file
(nothing left in the target), ``jfr print --json`` of its allocation samples, and
folding them (pure: :func:`fold`): ``comm;[java];Class.method...;allocated class``,
weighted by bytes, and by samples for ``weight=count``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import _proc, procfs

_TIMEOUT_S = 30.0


@dataclass(slots=True)
class JfrRun:
    pid: int
    name: str
    started: bool = False
    message: str = ""
    stacks_bytes: dict[str, int] = field(default_factory=dict)
    stacks_count: dict[str, int] = field(default_factory=dict)


def available() -> str | None:
    """Why Java allocation sampling cannot run here (None: it can)."""
    for tool in ("jattach", "jfr"):
        if _proc.which(tool) is None:
            return f"{tool} is not installed in the agent"
    return None


async def _jcmd(pid: int, command: str) -> tuple[bool, str]:
    try:
        res = await _proc.run(
            ["jattach", str(pid), "jcmd", command], timeout=_TIMEOUT_S, check=False
        )
    except _proc.ProcError as e:
        return False, str(e)
    said = (res.text.strip() or res.err.strip())[-500:]
    return res.returncode == 0 and "error" not in said.lower()[:200], said


async def start(pid: int, job_id: str) -> JfrRun:
    run = JfrRun(pid=pid, name=f"tracecar-{job_id}")
    ok, said = await _jcmd(pid, f"JFR.start name={run.name} settings=profile")
    if not ok:
        # A JVM still starting (or a loaded node) may not answer its first attach: once more.
        await asyncio.sleep(1.0)
        ok, said = await _jcmd(pid, f"JFR.start name={run.name} settings=profile")
    run.started = ok
    if not ok:
        run.message = f"JFR.start failed: {said}"
    return run


async def finish(run: JfrRun, *, comm: str, keep: Path) -> None:
    """Dump, read, stop and clean up one JVM's recording; fold its allocation samples."""
    if not run.started:
        return
    inside = f"/tmp/{run.name}.jfr"
    ok, said = await _jcmd(run.pid, f"JFR.dump name={run.name} filename={inside}")
    await _jcmd(run.pid, f"JFR.stop name={run.name}")
    try:
        host = procfs.resolve_in_root(run.pid, inside)
    except Exception as e:  # the JVM exited: its recording went with it
        run.message = f"the JVM's recording could not be read ({e})"
        return
    try:
        if not ok:
            run.message = f"JFR.dump failed: {said}"
            return
        try:
            await asyncio.to_thread(lambda: keep.write_bytes(host.read_bytes()))
        except OSError as e:
            run.message = f"the JVM's recording could not be read ({e.strerror})"
            return
    finally:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(host.unlink)
    try:
        res = await _proc.run(
            ["jfr", "print", "--json", "--events", "jdk.ObjectAllocationSample", str(keep)],
            timeout=_TIMEOUT_S * 4,
            check=False,
        )
    except _proc.ProcError as e:
        run.message = f"jfr print failed: {e}"
        return
    if res.returncode != 0:
        run.message = f"jfr print failed: {_proc.tool_message(res.err, res.returncode)}"
        return
    run.stacks_bytes, run.stacks_count = fold(res.text, comm=comm)


def _frame(f: dict[str, Any]) -> str:
    method = f.get("method") or {}
    cls = ((method.get("type") or {}).get("name") or "?").replace("/", ".")
    return f"{cls}.{method.get('name') or '?'}".replace(";", ":")


def fold(text: str, *, comm: str) -> tuple[dict[str, int], dict[str, int]]:
    """``jfr print --json`` allocation samples -> folded stacks by bytes, and by samples."""
    events = json.loads(text).get("recording", {}).get("events", [])
    by_bytes: dict[str, int] = {}
    by_count: dict[str, int] = {}
    for e in events:
        values = e.get("values") or {}
        weight = values.get("weight")
        if not isinstance(weight, int) or weight <= 0:
            continue
        frames = [_frame(f) for f in (values.get("stackTrace") or {}).get("frames") or []]
        obj = ((values.get("objectClass") or {}).get("name") or "?").replace("/", ".")
        key = ";".join([comm.replace(" ", "_") or "java", "[java]", *reversed(frames), obj])
        by_bytes[key] = by_bytes.get(key, 0) + weight
        by_count[key] = by_count.get(key, 0) + 1
    return by_bytes, by_count
