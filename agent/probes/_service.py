"""The probes service: resolve a request to a target, choose a backend, run and end probes.

:class:`Service` is what :mod:`agent.app` constructs and the probes router calls.
It owns the registry of probes (running ones and the last few ended ones), the
backend detection at start-up, each probe's run task and its watchdog (duration,
target exit, a tracer deaf to SIGINT), and the sweep of our perf-probe events.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agent import _proc, procfs
from agent import symbols as _symbols
from agent.errors import (
    AgentError,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    ToolError,
    TooMany,
    Unavailable,
)
from agent.metrics import Metrics
from agent.probes import _bpftrace, _perfprobe, _usdt
from agent.probes._model import (
    MANAGED_HINT,
    ArgType,
    BackendName,
    BpftracePlan,
    PerfProbePlan,
    ProbeDryRun,
    ProbePlan,
    ProbeRequest,
    ProbeView,
    SymbolEntry,
    SymbolList,
)
from agent.probes._plan import (
    Attached,
    Buckets,
    Counts,
    Finished,
    Hit,
    Lost,
    Spec,
)
from agent.probes._probe import Backends, Probe, target_of
from agent.probes._render import render
from agent.probes._stream import EventStream
from agent.settings import Settings
from agent.symbolize import sources as _sources
from agent.symbolize.resolver import Symbolizer, debuginfod_cache
from agent.symbolize.ustacks import UserStacks

BUFFER_EVENTS = 8192
"""Events a probe retains for late readers (older ones are still counted)."""
STREAM_MAX_BYTES = 256 << 20
"""Per-stream byte bound; a client may ask for less with ``?max_bytes=``."""
KEEP_FINISHED = 8
BPFTRACE_RECHECK_S = 30.0
DETECT_AFTER_S = 30.0
"""Backend detection (bpftrace loads a BPF program: a second of CPU for LLVM) runs this
long after start-up, off the pod's start path where the app competes for CPU, or at
once when a probe or ``/capabilities`` needs it first."""
STOP_GRACE_S = 5.0


def _match_process(info: procfs.ProcessInfo, name: str) -> bool:
    argv0 = os.path.basename(info.cmdline[0]) if info.cmdline else ""
    return name in (info.comm, argv0)


class Service:
    def __init__(self, settings: Settings, *, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.group = _perfprobe.group_name(settings.instance())
        self.backends = Backends()
        self.tracefs_reason = "not checked yet"
        self._probes: dict[str, Probe] = {}
        self._detect: asyncio.Task[None] | None = None
        self._wanted = asyncio.Event()
        self._bpftrace_checked = 0.0
        self.metrics.probes.running.set_function(
            lambda: sum(1 for p in self._probes.values() if p.running)
        )

    # --- lifecycle --------------------------------------------------------

    async def start(self) -> None:
        """Sweep a crashed run's perf-probe events; find out which backends work (in the
        background, :data:`DETECT_AFTER_S` after start-up or when first needed, so the
        agent serves at once; the first probe waits for it)."""
        self._wanted = asyncio.Event()
        self._detect = asyncio.create_task(self._detect_later())

    async def _detect_later(self) -> None:
        # A crashed run's perf-probe events go at once, not with the backends' detection:
        # they trap every process that maps their binary until deleted. Cheap when there
        # are none (one read of uprobe_events).
        with contextlib.suppress(OSError):
            await _perfprobe.sweep(self.group)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wanted.wait(), DETECT_AFTER_S)
        self._wanted.set()  # from here on, stop() waits for it rather than cancelling
        await self._detect_backends()

    async def _detect_backends(self) -> None:
        b = self.backends
        self._bpftrace_checked = time.monotonic()
        b.bpftrace_version = await _bpftrace.version()
        if b.bpftrace_version is None:
            b.bpftrace_reason = "bpftrace is not installed"
        else:
            b.bpftrace_ok, b.bpftrace_reason = await _bpftrace.usable()
        b.perf_version = await _perfprobe.version()
        tracefs_ok, self.tracefs_reason = await _perfprobe.ensure_tracefs()
        if b.perf_version is None:
            b.perf_reason = "perf is not installed"
        elif not tracefs_ok:
            b.perf_reason = self.tracefs_reason
        else:
            b.perf_ok = True
            b.perf_reason = (
                f"perf probe --target-ns with events in group {self.group} ({self.tracefs_reason})"
            )
            await _perfprobe.sweep(self.group)

    async def _ready(self) -> Backends:
        if self._detect is not None:
            self._wanted.set()
            await asyncio.shield(self._detect)
        b = self.backends
        if b.bpftrace_version is not None and not b.bpftrace_ok:
            # A failed load can be passing (locked memory is accounted per user, shared
            # with every root process of the node): look again, at most every 30 s,
            # rather than refusing bpftrace for the agent's whole life.
            now = time.monotonic()
            if now - self._bpftrace_checked >= BPFTRACE_RECHECK_S:
                self._bpftrace_checked = now
                b.bpftrace_ok, b.bpftrace_reason = await _bpftrace.usable()
        return b

    async def stop(self, *, grace: float = STOP_GRACE_S * 3) -> None:
        """Detach every probe (tracers reaped, events deleted) and sweep our group."""
        if self._detect is not None and not self._wanted.is_set():
            self._detect.cancel()  # never needed: no bpftrace started just to stop
            with contextlib.suppress(asyncio.CancelledError):
                await self._detect
            self._detect = None
        if self._detect is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._detect), 30)
        running = [p for p in self._probes.values() if p.running]
        for p in running:
            self._request_stop(p, "agent stopping")
        tasks = [p.task for p in running if p.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            # A tracer deaf to SIGINT, or a stuck start: cancelled, its run's finally
            # still reaps the tracer and deletes its events (no task outlives the app).
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=grace)
        if self.backends.perf_ok:
            await _perfprobe.sweep(self.group)

    def busy(self) -> bool:
        """An attached probe keeps an idle agent alive."""
        return any(p.running for p in self._probes.values())

    async def capabilities(self) -> dict[str, object]:
        b = await self._ready()
        chosen, reason = self._auto_backend(b)
        configured = self.settings.probe_backend
        if configured == "bpftrace":
            chosen, reason = (
                ("bpftrace", "configured") if b.bpftrace_ok else (None, b.bpftrace_reason)
            )
        elif configured == "perf-probe":
            chosen, reason = ("perf-probe", "configured") if b.perf_ok else (None, b.perf_reason)
        return {
            "available": chosen is not None,
            "backend": chosen,
            "reason": reason,
            "configured_backend": self.settings.probe_backend,
            "bpftrace": {
                "version": b.bpftrace_version,
                "usable": b.bpftrace_ok,
                "reason": b.bpftrace_reason,
            },
            "perf_probe": {
                "version": b.perf_version,
                "usable": b.perf_ok,
                "reason": b.perf_reason,
                "group": self.group,
            },
            "raw_bpftrace": self.settings.allow_raw_bpftrace,
            "limits": {
                "max_probes": self.settings.max_probes,
                "default_duration_s": self.settings.probe_default_duration_s,
                "max_duration_s": self.settings.probe_max_duration_s,
                "max_events": self.settings.probe_max_events,
                "max_event_rate": self.settings.probe_max_event_rate,
                "buffered_events": BUFFER_EVENTS,
                "stream_max_bytes": STREAM_MAX_BYTES,
            },
        }

    # --- symbols ----------------------------------------------------------

    async def symbols(self, pid: int, *, match: str | None, limit: int) -> SymbolList:
        if match is not None:
            try:
                pattern = re.compile(match)
            except re.error as e:
                raise Invalid(f"match: not a valid regular expression: {e}", field="match") from e
        else:
            pattern = None
        procfs.require_pid(pid)
        return await asyncio.to_thread(self._list_symbols, pid, pattern, match, limit)

    def _list_symbols(
        self, pid: int, pattern: re.Pattern[str] | None, match: str | None, limit: int
    ) -> SymbolList:
        objects = _symbols.mapped_objects(pid)
        out: list[SymbolEntry] = []
        truncated = False
        for obj in objects:
            host = procfs.resolve_in_root(pid, obj)
            try:
                syms = _symbols.object_symbols(host)
            except (NotFound, Invalid):
                continue
            for s in (*syms.functions, *syms.usdt):
                if pattern is not None and not pattern.search(s.name):
                    continue
                if len(out) >= limit:
                    truncated = True
                    break
                out.append(
                    {
                        "name": s.name,
                        "address": f"0x{s.address:x}",
                        "size": s.size,
                        "kind": s.kind,
                        "library": obj,
                    }
                )
        return {
            "pid": pid,
            "match": match,
            "count": len(out),
            "truncated": truncated,
            "objects": objects,
            "symbols": out,
        }

    # --- probes -----------------------------------------------------------

    def _target_pid(self, req: ProbeRequest) -> int:
        if req.pid is not None:
            return procfs.require_pid(req.pid)
        assert req.container is not None and req.process is not None
        procs = procfs.list_processes()
        procfs.pids_of_container(req.container, procs=procs)  # 404 naming the containers
        infos = [i for i in procs if i.container == req.container]
        found = [i.pid for i in infos if _match_process(i, req.process)]
        if not found:
            names = sorted({i.comm for i in infos})
            raise NotFound(
                f"process: no process named {req.process!r} in container {req.container!r}; "
                f"there are: {', '.join(names)}"
            )
        if len(found) > 1:
            raise Conflict(
                f"process: {len(found)} processes named {req.process!r} in container "
                f"{req.container!r} (pids {found}); name one with `pid`",
                pids=found,
            )
        return found[0]

    def _resolve(self, req: ProbeRequest, *, duration_s: float, max_events: int) -> Spec:
        pid = self._target_pid(req)
        if req.usdt is not None or req.python_function is not None:
            return _usdt.resolve(req, pid, duration_s=duration_s, max_events=max_events)
        if req.binary is None:
            view = procfs.exe_path(pid)
        elif req.binary.startswith("/"):
            view = req.binary
        else:
            view = _symbols.resolve_library(pid, req.binary)
        canonical, host_binary = _usdt.object_paths(pid, view)
        syms = _symbols.object_symbols(Path(host_binary))
        function = req.function
        assert function is not None
        address: int | None
        pclntab_entry: int | None = None
        if function.startswith("0x"):
            address = int(function, 16)
            # A stripped Go binary: bpftrace finds no symbol to check the address
            # against; a function's entry in the pclntab is an instruction boundary.
            pclntab_entry = _sources.pclntab_entry(Path(host_binary), address)
        else:
            name, _, off = function.partition("+")
            sym = syms.lookup(name)
            if sym is None and req.binary is None and procfs.process_info(pid).runtime == "dotnet":
                raise Invalid(
                    f"function: no native function {name!r} in {canonical} (the .NET host); "
                    f"if it is a managed method: {MANAGED_HINT}",
                    field="function",
                    closest=syms.closest(name),
                )
            if sym is None:
                raise NotFound(
                    f"function: no function {name!r} in {canonical}",
                    closest=syms.closest(name),
                    binary=canonical,
                )
            address = sym.address + (int(off, 16) if off else 0)
        args: tuple[ArgType, ...] = tuple(req.args)
        if req.mode == "histogram" and req.of.startswith("arg"):
            # A histogram of an argument not typed in `args` reads it as a signed int.
            n = int(req.of[3:])
            filler: ArgType = "int"
            args += (filler,) * (n + 1 - len(args))
        return Spec(
            pid=pid,
            binary=canonical,
            host_binary=host_binary,
            function=function,
            address=address,
            mode=req.mode,
            of=req.of,
            args=args,
            retval=req.retval,
            retval_type=req.retval_type,
            stack=req.stack,
            duration_s=duration_s,
            pclntab_entry=pclntab_entry,
            max_events=max_events,
        )

    def _auto_backend(self, b: Backends) -> tuple[BackendName | None, str]:
        if b.bpftrace_ok:
            return "bpftrace", f"bpftrace {b.bpftrace_version} usable: {b.bpftrace_reason}"
        if b.perf_ok:
            return "perf-probe", f"bpftrace unusable ({b.bpftrace_reason}); {b.perf_reason}"
        return None, f"no backend: bpftrace: {b.bpftrace_reason}; perf probe: {b.perf_reason}"

    def _choose(self, req: ProbeRequest, spec: Spec | None, b: Backends) -> tuple[BackendName, str]:
        wanted = req.backend or self.settings.probe_backend
        if req.program is not None:
            wanted = "bpftrace"
        if spec is not None and spec.is_usdt:
            return self._choose_usdt(req, b)
        if wanted == "bpftrace":
            if not b.bpftrace_ok:
                raise Unavailable(f"backend: bpftrace cannot run here: {b.bpftrace_reason}")
            if spec is not None and spec.in_function:
                raise Invalid(
                    "function: bpftrace 0.17 here cannot probe inside a function "
                    "(symbol+offset); use backend perf-probe",
                    field="function",
                )
            return "bpftrace", "requested" if req.backend else "configured"
        if wanted == "perf-probe":
            if not b.perf_ok:
                raise Unavailable(f"backend: perf probe cannot run here: {b.perf_reason}")
            if spec is not None and spec.stack:
                raise Invalid("stack: user stacks need the bpftrace backend", field="stack")
            return "perf-probe", "requested" if req.backend else "configured"
        if spec is not None and spec.in_function and b.perf_ok and not spec.stack:
            return "perf-probe", "bpftrace here cannot probe inside a function (symbol+offset)"
        chosen, reason = self._auto_backend(b)
        if chosen is None:
            raise Unavailable(f"{reason} (see GET /capabilities)")
        if chosen == "perf-probe" and spec is not None and spec.stack:
            raise Invalid("stack: user stacks need bpftrace, which cannot run here", field="stack")
        return chosen, reason

    def _choose_usdt(self, req: ProbeRequest, b: Backends) -> tuple[BackendName, str]:
        field = "python_function" if req.python_function is not None else "usdt"
        if req.backend == "perf-probe":
            raise Invalid(
                f"backend: {field} needs the bpftrace backend (perf probe reaches SDT notes "
                "only through a build-id cache entry per binary, made in the agent's own "
                "mount namespace); use backend bpftrace or auto",
                field="backend",
            )
        if not b.bpftrace_ok:
            raise Unavailable(
                f"backend: {field} needs bpftrace, which cannot run here: {b.bpftrace_reason}"
            )
        if req.backend == "bpftrace":
            return "bpftrace", "requested"
        return "bpftrace", f"USDT probes are attached by bpftrace {b.bpftrace_version}"

    def _limits(self, req: ProbeRequest) -> tuple[float, int]:
        s = self.settings
        duration = req.duration_s if req.duration_s is not None else s.probe_default_duration_s
        if duration > s.probe_max_duration_s:
            raise Invalid(
                f"duration_s: {duration:g} is above the maximum {s.probe_max_duration_s:g} "
                f"(allowed: 0 < duration_s <= {s.probe_max_duration_s:g})",
                field="duration_s",
            )
        max_events = req.max_events if req.max_events is not None else s.probe_max_events
        if max_events > s.probe_max_events:
            raise Invalid(
                f"max_events: {max_events} is above the maximum {s.probe_max_events} "
                f"(allowed: 1 <= max_events <= {s.probe_max_events})",
                field="max_events",
            )
        return duration, max_events

    async def create(self, req: ProbeRequest, *, dry_run: bool = False) -> ProbeView | ProbeDryRun:
        """Plan a probe; unless ``dry_run``, attach it and return once it is attached."""
        if req.program is not None and not self.settings.allow_raw_bpftrace:
            raise Forbidden(
                "program: raw bpftrace programs are disabled on this agent; the operator can "
                "enable them with TRACECAR_AGENT_ALLOW_RAW_BPFTRACE=true (root-equivalent power)"
            )
        duration, max_events = self._limits(req)
        b = await self._ready()
        if req.program is not None:
            pid = self._target_pid(req)
            spec = None
        else:
            spec = await asyncio.to_thread(
                self._resolve, req, duration_s=duration, max_events=max_events
            )
            pid = spec.pid
        backend, reason = self._choose(req, spec, b)
        # Random, not a counter: it names the probe's events, and perf probe refuses an
        # event name that exists in any group of the node's tracefs (one per node, shared
        # by every agent on it), not only in this agent's own group.
        probe_id = secrets.token_hex(4)
        plan: ProbePlan
        if backend == "bpftrace":
            text = req.program if spec is None else _bpftrace.program(spec)
            assert text is not None
            plan = BpftracePlan(program=text, argv=_bpftrace.argv(text, pid, spec=spec))
            if spec is not None and spec.is_usdt:
                plan.env = _bpftrace.env(spec)
                if spec.usdt_enable:
                    plan.note = _usdt.USDT_ENABLE_NOTE
        else:
            assert spec is not None
            pp = _perfprobe.plan(
                spec, group=self.group, probe_id=probe_id, control_dir=self._control_dir(probe_id)
            )
            plan = PerfProbePlan(commands=[*pp.add, pp.record, pp.script], cleanup=pp.delete)
        if dry_run:
            return ProbeDryRun(
                dry_run=True,
                backend=backend,
                backend_reason=reason,
                target=None if spec is None else target_of(spec, address=False),
                duration_s=duration,
                max_events=max_events,
                plan=plan,
            )
        if sum(1 for p in self._probes.values() if p.running) >= self.settings.max_probes:
            raise TooMany(
                f"{self.settings.max_probes} probes are already attached (the configured "
                "maximum); DELETE one first"
            )
        probe = Probe(
            id=probe_id,
            request=req,
            spec=spec,
            backend=backend,
            backend_reason=reason,
            plan=plan,
            stream=EventStream(capacity=BUFFER_EVENTS, rate=self.settings.probe_max_event_rate),
            duration_s=duration,
            max_events=max_events,
        )
        if isinstance(plan, BpftracePlan):
            probe.session = _bpftrace.Session(plan.program, pid, spec)
        else:
            assert spec is not None
            probe.session = _perfprobe.Session(spec, pp)
        self._probes[probe_id] = probe
        self._evict()
        attached: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        probe.task = asyncio.create_task(self._run(probe, attached, pid))
        self.metrics.probes.started.inc()
        try:
            await asyncio.wait_for(asyncio.shield(attached), 60)
        except TimeoutError:
            self._request_stop(probe, "attach timed out")
        if probe.state == "failed":
            # The tracer failed (a 502 everywhere, agent.errors), not the request: every
            # request field was checked before anything ran.
            raise ToolError(
                f"attaching the probe failed: {probe.error}",
                tool=probe.backend,
                probe=probe.answer(),
            )
        return probe.view()

    def _control_dir(self, probe_id: str) -> str:
        return os.path.join(tempfile.gettempdir(), f"{self.group}-{probe_id}")

    def _evict(self) -> None:
        done = [p for p in self._probes.values() if not p.running]
        for p in sorted(done, key=lambda p: p.created_at)[: max(0, len(done) - KEEP_FINISHED)]:
            del self._probes[p.id]

    def _request_stop(self, probe: Probe, reason: str) -> None:
        if probe.stop_reason is None:
            probe.stop_reason = reason
        if probe.session is not None:
            probe.session.interrupt()

    async def _watch(self, probe: Probe, pid: int) -> None:
        """The duration (bpftrace enforces it too), the target exiting, a stuck tracer."""
        deadline = time.monotonic() + probe.duration_s
        while probe.stop_reason is None:
            now = time.monotonic()
            if now >= deadline + (1.0 if probe.backend == "bpftrace" else 0.0):
                self._request_stop(probe, "duration")
                break
            if not procfs.pid_exists(pid):
                self._request_stop(probe, "target exited")
                break
            await asyncio.sleep(min(0.25, max(0.01, deadline - now)))
        await asyncio.sleep(STOP_GRACE_S)
        # Still here: the tracer ignored SIGINT. Kill it (the run's finally reaps and cleans).
        if probe.session is not None:
            await probe.session.stop(grace=0)

    async def _run(self, probe: Probe, attached: asyncio.Future[None], pid: int) -> None:
        session = probe.session
        assert session is not None
        watcher: asyncio.Task[None] | None = None
        try:
            await session.start()
            if isinstance(session, _bpftrace.Session):
                it = session.items()
                # bpftrace says when its probes are attached; only then is the probe "running".
                async for item in it:
                    if isinstance(item, Attached):
                        break
                else:
                    raise _proc.ProcError(session.message(), argv=session.argv)
                if probe.spec is None:
                    # A raw program: bpftrace announced its probes but attaches them after.
                    await asyncio.sleep(1.0)
            else:
                it = session.items()
            probe.state = "running"
            probe.started_at = time.time()
            attached.set_result(None)
            watcher = asyncio.create_task(self._watch(probe, pid))
            await self._consume(probe, it)
            probe.reason = probe.stop_reason or self._why_ended(probe, pid)
            if probe.reason == "tracer exited":
                msg = session.message()
                if msg and "exited with status" not in msg:
                    probe.reason = f"tracer exited: {msg}"
            probe.state = "finished"
        except asyncio.CancelledError:
            probe.state = "finished"
            probe.reason = probe.stop_reason or "cancelled"
            raise
        except (_proc.ProcError, AgentError, OSError) as e:
            probe.state = "failed"
            self.metrics.probes.failed.inc()
            probe.error = _error_text(e, session)
        finally:
            if watcher is not None:
                watcher.cancel()
                # Gone, not just asked to go: it may be killing the tracer right now.
                await asyncio.wait({watcher})
            with contextlib.suppress(Exception):
                await session.stop(grace=STOP_GRACE_S)
            probe.finished_at = time.time()
            probe.stream.close()
            if not attached.done():
                attached.set_result(None)

    @staticmethod
    def _why_ended(probe: Probe, pid: int) -> str:
        """The tracer exited by itself: bpftrace enforces the duration and count caps."""
        counting = probe.spec is not None and probe.spec.mode != "events"
        if counting and probe.counted >= probe.max_events:
            return "max_events"
        started = probe.started_at or probe.created_at
        if time.time() - started >= probe.duration_s - 0.5:
            return "duration"
        if not procfs.pid_exists(pid):
            return "target exited"
        return "tracer exited"

    async def _consume(self, probe: Probe, items: AsyncIterator[Any]) -> None:
        stream = probe.stream
        spec = probe.spec
        seen = 0
        # The profiles' names (pclntab, debug files, inlined frames, frameless leaves'
        # callers), one symbolizer per probe; named in a worker thread (a debug file's
        # first read, or a debuginfod fetch, must not hold the event loop).
        names = (
            UserStacks(Symbolizer(debuginfod=debuginfod_cache(self.settings)))
            if spec is not None and spec.stack
            else None
        )
        async for item in items:
            if isinstance(item, Hit):
                seen += 1
                if seen > probe.max_events:
                    continue
                if spec is not None and names is not None and item.event.get("stack"):
                    item.event["stack"] = await asyncio.to_thread(
                        self._symbolize, names, spec.pid, item.event["stack"]
                    )
                if not stream.publish(item.event):
                    self.metrics.drop("probe_rate_limit")
                probe.hits = max(probe.counted, seen)
                if seen == probe.max_events:
                    self._request_stop(probe, "max_events")
            elif isinstance(item, Counts):
                probe.counted = item.hits
                probe.hits = max(probe.counted, seen)
                counting = probe.spec is not None and probe.spec.mode != "events"
                if counting and item.hits >= probe.max_events:
                    self._request_stop(probe, "max_events")
            elif isinstance(item, Buckets):
                probe.histogram = item.buckets
            elif isinstance(item, Lost):
                probe.lost += item.events
                self.metrics.drop("probe_tracer_lost", item.events)
            elif isinstance(item, Finished):
                continue

    @staticmethod
    def _symbolize(names: UserStacks, pid: int, frames: list[str]) -> list[str]:
        """bpftrace's raw addresses (innermost first) -> function names, innermost first,
        as the profiles name them."""
        addrs: list[int] = []
        for f in frames:
            try:
                addrs.append(int(f.split()[0], 16))
            except (ValueError, IndexError):
                return frames  # bpftrace resolved them already
        return names.frames(pid, addrs)[::-1]

    def get(self, probe_id: str) -> Probe:
        probe = self._probes.get(probe_id)
        if probe is None:
            raise NotFound(f"no probe {probe_id!r} (see GET /probes)")
        return probe

    def list_probes(self) -> list[ProbeView]:
        return [p.view() for p in sorted(self._probes.values(), key=lambda p: p.created_at)]

    async def delete(self, probe_id: str) -> ProbeView:
        """Detach a running probe (it stays readable); forget a finished one."""
        probe = self.get(probe_id)
        if not probe.running:
            del self._probes[probe_id]
            return probe.view().model_copy(update={"deleted": True})
        self._request_stop(probe, "deleted")
        if probe.task is not None:
            await asyncio.wait({probe.task}, timeout=STOP_GRACE_S * 3)
        return probe.view()

    def stream(
        self, probe_id: str, *, sse: bool, max_bytes: int = STREAM_MAX_BYTES
    ) -> AsyncIterator[bytes]:
        """The probe's events as NDJSON lines or Server-Sent Events, until it ends."""
        probe = self.get(probe_id)
        return render(probe, sse=sse, max_bytes=min(max_bytes, STREAM_MAX_BYTES))


def _error_text(e: BaseException, session: Any) -> str:
    if isinstance(e, AgentError):
        return e.detail
    text = str(e)
    msg = session.message() if session is not None else ""
    if msg and msg not in text and "exited with status" not in msg:
        text = f"{text}: {msg}" if text else msg
    return text or type(e).__name__
