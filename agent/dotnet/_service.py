"""The .NET diagnostics service: EventPipe traces saved as .nettrace artifacts,
System.Runtime counters, and the runtime's own answers (ProcessInfo), over the
diagnostics socket of a pod's .NET process.

This module owns the ``dotnet-trace`` jobs, turning the IPC layer's failures into
the agent's errors (a pid that is not .NET, a socket that is missing or gone, a
command the runtime's version does not answer), and ending every session it
starts (StopTracing, then the connection closed) whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from agent import procfs
from agent.dotnet import _ipc, _nettrace
from agent.dotnet._model import (
    SYSTEM_RUNTIME,
    Counters,
    CounterValue,
    EventCount,
    ProcessInfoAnswer,
    ProviderUsed,
    TraceRequest,
    TraceResult,
    TraceSummary,
    event_name,
    preset_providers,
    resolve,
)
from agent.errors import Conflict, Invalid, NotFound
from agent.jobs import Job, JobStore, atomic_path, write_atomic

log = logging.getLogger(__name__)

KIND = "dotnet-trace"
TraceJob = Job[TraceResult]
TRACE_FILE = "trace.nettrace"
MAX_TRACE_BYTES = 1 << 30
"""A session's stream beyond this is cut (the file stays readable up to there)."""


def require_dotnet(pid: int) -> procfs.ProcessInfo:
    """The process, if it is a .NET one; else a 404 (no such pid) or a 409 naming it."""
    info = procfs.process_info(pid)
    if info.runtime != "dotnet":
        what = info.runtime + (f" {info.runtime_version}" if info.runtime_version else "")
        raise Conflict(
            f"pid {pid} ({info.comm}) is not a .NET process: its runtime is {what}; the "
            "diagnostics port is .NET's (GET /processes lists each process's runtime)",
            runtime=info.runtime,
        )
    return info


def _label(info: procfs.ProcessInfo) -> str:
    return f"pid {info.pid} ({info.comm}, .NET {info.runtime_version or 'version unknown'})"


@contextlib.asynccontextmanager
async def ipc_errors(info: procfs.ProcessInfo) -> AsyncIterator[None]:
    """The IPC layer's failures, as answers that say what to do."""
    try:
        yield
    except _ipc.SocketMissing as e:
        raise Conflict(
            f"{_label(info)} has no diagnostics socket ({e}): it runs with "
            "DOTNET_EnableDiagnostics=0 (COMPlus_EnableDiagnostics=0), another TMPDIR, "
            "or it has not started its runtime yet"
        ) from e
    except _ipc.SocketGone as e:
        raise Conflict(f"{_label(info)}: its diagnostics socket is gone ({e})") from e
    except _ipc.CommandError as e:
        if e.unsupported:
            raise Conflict(
                f"{e.command.name} needs .NET {e.command.since} or later; {_label(info)} "
                f"answered it as an unknown command (HRESULT 0x{e.hresult:08X})",
                minimum_version=e.command.since,
            ) from e
        raise Conflict(f"{_label(info)}: {e}") from e
    except _ipc.IpcError as e:
        raise Conflict(f"{_label(info)}: the diagnostics socket failed: {e}") from e


TRACEPOINT_PROVIDER = "libcoreclrtraceptprovider.so"


def _opted_in() -> list[procfs.ProcessInfo]:
    out = []
    for p in procfs.list_processes():
        if p.runtime != "dotnet":
            continue
        try:
            environ = Path(f"/proc/{p.pid}/environ").read_bytes()
        except OSError:
            continue
        if OPT_IN_ENV in environ.split(b"\0"):
            out.append(p)
    return out


def dotnet_facts(info: procfs.ProcessInfo) -> dict[str, object]:
    """What a .NET process offers the agent, from its mappings, environment and /tmp."""
    pid = info.pid
    try:
        maps = Path(f"/proc/{pid}/maps").read_text(errors="replace")
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        maps, environ = "", b""
    knobs = procfs.dotnet_knobs(environ)
    version = info.runtime_version
    event_log = procfs.dotnet_env(version, "EnableEventLog")
    try:
        socket: str | None = _ipc.socket_path(pid).name
    except _ipc.IpcError:
        socket = None
    out: dict[str, object] = {
        "pid": pid,
        "comm": info.comm,
        "container": info.container,
        "version": version,
        "diagnostics_socket": socket,
        "perf_map": info.perf_map,
        "event_log": any(knobs.get(f"{p}EnableEventLog") == "1" for p in ("DOTNET_", "COMPlus_")),
    }
    fw = procfs.dotnet_framework(maps)
    loaded = f"/{TRACEPOINT_PROVIDER}" in maps
    out["lttng_provider"] = loaded
    if not loaded:
        shipped = (
            fw is not None
            and (procfs.proc_root(pid) / fw.lstrip("/") / TRACEPOINT_PROVIDER).exists()
        )
        if not shipped:
            why = f"its shared framework has no {TRACEPOINT_PROVIDER}"
        elif knobs.get("DOTNET_LTTng") == "0" or knobs.get("COMPlus_LTTng") == "0":
            why = "LTTng=0 in its environment turned the provider off"
        else:
            why = (
                f"{TRACEPOINT_PROVIDER} did not load: it links the LTTng-UST library its "
                "runtime was built with (liblttng-ust.so.0, LTTng-UST 2.12, for .NET Core 3.1 "
                "and others), which the app's image lacks (Debian 12 and Ubuntu 22.04+ ship "
                "only .so.1, 2.13): install liblttng-ust0 2.12 in the image "
                "(docs/dotnet.md), then restart the app"
            )
        out["lttng_reason"] = why
    elif not out["event_log"]:
        out["lttng_reason"] = f"the provider is loaded, but events need {event_log}=1 at start"
    return out


def summarize(data: bytes, *, top: int = 200) -> TraceSummary:
    """Count and name the events of a nettrace stream."""
    trace = _nettrace.parse(data)
    counts = Counter(
        (e.type.provider, event_name(e.type.provider, e.type.event_id, e.type.name, e.type.version))
        for e in trace.events
    )
    return TraceSummary(
        bytes=len(data),
        complete=trace.complete,
        events=len(trace.events),
        event_types=len(trace.types),
        stacks=trace.stacks,
        pid=trace.info.pid,
        by_event=[
            EventCount(provider=p, event=n, count=c) for (p, n), c in counts.most_common(top)
        ],
    )


def counters_of(trace: _nettrace.Nettrace) -> dict[str, CounterValue]:
    """System.Runtime's EventCounters payloads, by counter name (last value + series)."""
    out: dict[str, CounterValue] = {}
    for e in trace.events:
        if e.type.provider != SYSTEM_RUNTIME or e.type.name != "EventCounters":
            continue
        decoded = _nettrace.decode(e)
        payload = _payload(decoded)
        if payload is None or not isinstance(payload.get("Name"), str):
            continue
        kind = str(payload.get("CounterType", ""))
        raw = payload.get("Mean") if "Mean" in payload else payload.get("Increment")
        if not isinstance(raw, int | float):
            continue
        name = payload["Name"]
        prior = out.get(name)
        samples = [*(prior.samples if prior else []), float(raw)]
        out[name] = CounterValue(
            name=name,
            display_name=str(payload.get("DisplayName", name)),
            units=str(payload.get("DisplayUnits", "")),
            type=kind if kind in ("Mean", "Sum") else "other",  # type: ignore[arg-type]
            value=float(raw),
            samples=samples,
        )
    return out


def _payload(decoded: dict[str, Any] | None) -> dict[str, Any] | None:
    """EventCounters' {"Payload": {...}} (3.1 wraps it in an unnamed struct)."""
    while isinstance(decoded, dict):
        if "Payload" in decoded and isinstance(decoded["Payload"], dict):
            return decoded["Payload"]
        if len(decoded) == 1:
            decoded = next(iter(decoded.values()))
            continue
        return None
    return None


OPT_IN_ENV = b"TRACECAR_DOTNET_COUNTERS=1"
"""A .NET process whose environment has this gets its counters on /metrics."""
METRICS_EVERY_S = 10.0


class Service:
    def __init__(
        self,
        jobs: JobStore,
        *,
        max_running: int = 4,
        registry: CollectorRegistry | None = None,
        metrics_every_s: float = METRICS_EVERY_S,
    ) -> None:
        self.jobs = jobs
        jobs.register(KIND, TraceResult)  # job.json's result is read back as the model
        self.max_running = max_running
        self.metrics_every_s = metrics_every_s
        self._poller: asyncio.Task[None] | None = None
        self._gauge = (
            Gauge(
                "tracecar_dotnet_counter",
                "System.Runtime counters of the .NET processes that opt in "
                "(TRACECAR_DOTNET_COUNTERS=1 in their environment): the last interval's "
                "mean, or its increment for counters of type Sum",
                ["pid", "container", "counter", "units"],
                registry=registry,
            )
            if registry is not None
            else None
        )

    async def start(self) -> None:
        """Nothing until someone scrapes /metrics (:meth:`export_counters`): an agent
        no one scrapes does not look for .NET processes every few seconds."""

    def export_counters(self) -> None:
        """Keep the opted-in processes' counters on /metrics from now on (called by each
        scrape; the first one starts the poller)."""
        if self._gauge is not None and self._poller is None:
            self._poller = asyncio.create_task(self._export(), name="dotnet-counters-metrics")

    async def _export(self) -> None:
        """Every ``metrics_every_s``: the counters of each opted-in .NET process into the
        gauge; the series of processes that are gone (or failed to answer) removed."""
        assert self._gauge is not None
        shown: set[tuple[str, ...]] = set()
        while True:
            now: set[tuple[str, ...]] = set()
            for info in await asyncio.to_thread(_opted_in):
                try:
                    got = await self.counters(info.pid, duration_s=1.5, interval_s=1)
                except Exception as e:  # one app's failure must not stop the others
                    log.info(
                        "no counters for /metrics",
                        extra={"fields": {"pid": info.pid, "error": str(e)}},
                    )
                    continue
                for c in got.counters.values():
                    labels = (str(info.pid), info.container, c.name, c.units)
                    self._gauge.labels(*labels).set(c.value)
                    now.add(labels)
            for gone in shown - now:
                with contextlib.suppress(KeyError):
                    self._gauge.remove(*gone)
            shown = now
            await asyncio.sleep(self.metrics_every_s)

    def busy(self) -> bool:
        """A running EventPipe trace keeps an idle agent alive."""
        return bool(self.jobs.running(KIND))

    async def capabilities(self) -> dict[str, object]:
        """Each .NET process of the pod: version, diagnostics socket, perf map, and
        whether its LTTng tracepoint provider loaded (and why not)."""
        procs = await asyncio.to_thread(
            lambda: [p for p in procfs.list_processes() if p.runtime == "dotnet"]
        )
        found = await asyncio.to_thread(lambda: [dotnet_facts(p) for p in procs])
        return {
            "available": True,
            "reason": "the diagnostics port is reached through /proc/PID/root/tmp",
            "processes": found,
        }

    async def stop(self) -> None:
        # Running sessions end with their jobs (JobStore.shutdown cancels them, and
        # each one's finally stops its session); the poller's, with it.
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    # --- traces ---------------------------------------------------------------

    def providers(self, req: TraceRequest) -> list[_ipc.Provider]:
        specs = [*(preset_providers(req.preset) if req.preset else []), *req.providers]
        if not specs:
            raise Invalid(
                "no providers: give a preset (cpu-sampling, gc, exceptions) or providers",
                field="providers",
                allowed={"presets": ["cpu-sampling", "gc", "exceptions"]},
            )
        merged: dict[str, _ipc.Provider] = {}
        for i, spec in enumerate(specs):
            name, kw, level, flt = resolve(spec, i - (len(specs) - len(req.providers)))
            prior = merged.get(name)
            if prior is not None:  # one provider once: keywords joined, the finer level
                kw, level = kw | prior.keywords, max(level, prior.level)
                flt = flt or prior.filter
            merged[name] = _ipc.Provider(name, kw, level, flt)
        return list(merged.values())

    async def start_trace(self, pid: int, req: TraceRequest) -> TraceJob:
        info = await asyncio.to_thread(require_dotnet, pid)
        providers = self.providers(req)
        job: TraceJob = self.jobs.create(
            KIND,
            {"pid": pid, "request": req.model_dump(), "runtime_version": info.runtime_version},
            result=TraceResult(),
            max_running=self.max_running,
        )
        # The session starts before the answer: a refusal (no socket, an unsupported
        # command) is this request's 409, not a failed job found later.
        try:
            async with ipc_errors(info):
                conn, session = await _ipc.start_session(
                    pid, providers, buffer_mb=req.buffer_mb, rundown=req.rundown
                )
        except BaseException:
            await self.jobs.delete(job)
            raise
        job.result.session_id = session
        job.result.providers = [
            ProviderUsed(name=p.name, keywords=f"0x{p.keywords:x}", level=p.level, filter=p.filter)
            for p in providers
        ]

        async def work(job: TraceJob) -> None:
            await self._record(job, info, conn, session, req.duration_s)

        self.jobs.start(job, work)
        return job

    async def _record(
        self,
        job: TraceJob,
        info: procfs.ProcessInfo,
        conn: _ipc.Connection,
        session: int,
        duration_s: float,
    ) -> None:
        final = job.artifact(TRACE_FILE)
        written = 0
        stopped = False
        started = time.monotonic()
        try:
            with atomic_path(final) as part:
                with part.open("wb") as out:

                    async def pump() -> None:
                        nonlocal written
                        while True:
                            chunk = await conn.reader.read(1 << 16)
                            if not chunk:
                                return
                            if written + len(chunk) > MAX_TRACE_BYTES:
                                job.result.cut = f"at {MAX_TRACE_BYTES} bytes"
                                return
                            out.write(chunk)
                            written += len(chunk)

                    reader = asyncio.create_task(pump())
                    ended_early = await _wait_or_progress(
                        reader, job, duration_s=duration_s, started=started
                    )
                    if not ended_early:
                        try:
                            await _ipc.stop_session(info.pid, session)
                            stopped = True
                        except _ipc.IpcError as e:
                            job.result.stop_error = str(e)
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(asyncio.shield(reader), 60)
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, OSError, ConnectionError):
                        await reader
                # a file with at least the stream's header is worth keeping
                if written == 0:
                    raise RuntimeError(
                        f"{_label(info)} sent no trace data (it exited, or closed the session)"
                    )
        finally:
            if not stopped:
                with contextlib.suppress(_ipc.IpcError, OSError):
                    await asyncio.wait_for(_ipc.stop_session(info.pid, session), 5)
            await conn.close()
        job.result.bytes = written
        job.result.recorded_s = round(time.monotonic() - started, 3)
        data = await asyncio.to_thread(final.read_bytes)
        try:
            summary = await asyncio.to_thread(summarize, data)
        except _nettrace.NettraceError as e:
            job.result.parse_error = str(e)
        else:
            write_atomic(job.artifact("summary.json"), summary.model_dump_json())
            job.result.events = summary.events
            job.result.complete = summary.complete

    def get(self, job_id: str) -> TraceJob:
        return self.jobs.get(KIND, job_id)

    def list(self) -> list[TraceJob]:
        return self.jobs.of_kind(KIND)

    def summary(self, job: TraceJob) -> TraceSummary:
        path = job.artifact("summary.json")
        if not job.finished:
            raise Conflict(f"trace {job.id} is {job.state}: its summary comes when it ends")
        if not path.exists():
            raise NotFound(f"trace {job.id} has no summary ({job.error or 'not parsed'})")
        return TraceSummary.model_validate_json(path.read_bytes())

    def trace_file(self, job: TraceJob) -> Path:
        path = job.artifact(TRACE_FILE)
        if not job.finished:
            raise Conflict(f"trace {job.id} is {job.state}: download it when it ends")
        if not path.exists():
            raise NotFound(f"trace {job.id} has no .nettrace ({job.error or 'nothing recorded'})")
        return path

    async def delete(self, job: TraceJob) -> None:
        await self.jobs.delete(job)

    # --- counters -------------------------------------------------------------

    async def counters(self, pid: int, *, duration_s: float, interval_s: int) -> Counters:
        info = await asyncio.to_thread(require_dotnet, pid)
        provider = _ipc.Provider(
            SYSTEM_RUNTIME, 0xFFFFFFFF, 4, f"EventCounterIntervalSec={interval_s}"
        )
        chunks: list[bytes] = []
        async with ipc_errors(info):
            # No method rundown (it costs the app and carries nothing counters need):
            # CollectTracing2, answered by 3.1.23 and 5+; older runtimes do not know it.
            try:
                conn, session = await _ipc.start_session(
                    pid, [provider], buffer_mb=16, rundown=False
                )
            except _ipc.CommandError as e:
                if not (e.unsupported or e.hresult == _ipc.E_BAD_ENCODING):
                    raise
                conn, session = await _ipc.start_session(
                    pid, [provider], buffer_mb=16, rundown=True
                )
            stopped = False
            try:

                async def pump() -> None:
                    while chunk := await conn.reader.read(1 << 16):
                        chunks.append(chunk)

                reader = asyncio.create_task(pump())
                done, _ = await asyncio.wait({reader}, timeout=duration_s)
                if not done:
                    await _ipc.stop_session(pid, session)
                    stopped = True
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(reader), 30)
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError, ConnectionError):
                    await reader
            finally:
                if not stopped:
                    with contextlib.suppress(_ipc.IpcError, OSError, TimeoutError):
                        await asyncio.wait_for(_ipc.stop_session(pid, session), 5)
                await conn.close()
        try:
            trace = await asyncio.to_thread(_nettrace.parse, b"".join(chunks))
        except _nettrace.NettraceError as e:
            raise Conflict(f"{_label(info)} sent a stream the agent cannot read: {e}") from e
        return Counters(
            pid=pid,
            runtime_version=info.runtime_version,
            duration_s=duration_s,
            interval_s=interval_s,
            counters=counters_of(trace),
        )

    # --- the runtime's own answers ----------------------------------------------

    async def process_info(self, pid: int) -> ProcessInfoAnswer:
        info = await asyncio.to_thread(require_dotnet, pid)
        async with ipc_errors(info):
            body = await _ipc.call(pid, _ipc.PROCESS_INFO)
        return parse_process_info(body)


def parse_process_info(body: bytes) -> ProcessInfoAnswer:
    """ProcessInfo's answer: uint64 pid, GUID cookie, then three protocol strings."""
    pid = struct.unpack_from("<Q", body, 0)[0]
    cookie = str(uuid.UUID(bytes_le=bytes(body[8:24])))
    pos = 24
    texts = []
    for _ in range(3):
        (n,) = struct.unpack_from("<I", body, pos)
        pos += 4
        texts.append(body[pos : pos + 2 * n].decode("utf-16-le").rstrip("\0"))
        pos += 2 * n
    return ProcessInfoAnswer(
        pid=pid, runtime_cookie=cookie, command_line=texts[0], os=texts[1], arch=texts[2]
    )


async def _wait_or_progress(
    reader: asyncio.Task[None], job: TraceJob, *, duration_s: float, started: float
) -> bool:
    """Wait out the duration (or a stop request) with progress; True when the stream
    ended first (the process exited)."""
    stop = asyncio.create_task(job.stop_requested.wait())
    try:
        while True:
            left = duration_s - (time.monotonic() - started)
            if left <= 0 or stop.done():
                return False
            done, _ = await asyncio.wait({reader, stop}, timeout=min(left, 1.0))
            job.progress = min(0.99, (time.monotonic() - started) / duration_s)
            if reader in done:
                return True
    finally:
        stop.cancel()
