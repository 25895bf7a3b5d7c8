"""The LTTng service: our sessions in the pod's session daemon, their bounds and traces.

:class:`Service` is what :mod:`agent.app` constructs and the lttng router calls.
It owns:

* the pod's root session daemon (:mod:`._daemon`);
* a registry of *our* sessions. Each is named ``tracecar-<instance>-<id>`` in
  the daemon, so the agent never touches anyone else's sessions and can sweep
  its own leftovers at start-up; its files live in ``DATA_DIR/lttng/<id>/``;
* the bounds: a maximum number of sessions, a size cap per session (a watchdog
  stops recording when the trace outgrows it), and a maximum lifetime after
  which the session is destroyed and its files removed. Shutdown destroys all
  of our sessions and removes their files.

Sessions are not :class:`agent.jobs.JobStore` jobs: their life (created,
active, stopped, restarted) is not a job's one-way state machine; the store's
start-up sweep leaves ``DATA_DIR/lttng`` alone (no directory there is named like a
job), and :meth:`Service.start` sweeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agent import _proc, procfs
from agent.capabilities import lttng_kernel
from agent.errors import (
    Conflict,
    Invalid,
    NotFound,
    ToolError,
    ToolTimedOut,
    TooMany,
    Unavailable,
)
from agent.jobs import atomic_path, new_id
from agent.lttng import _native, _read
from agent.lttng._cli import Lttng, LttngFailed
from agent.lttng._daemon import SessionDaemon
from agent.lttng._model import (
    Action,
    ChannelStats,
    Deleted,
    Format,
    ProcessTracepoints,
    SessionPlan,
    SessionRequest,
    SessionView,
    Tracepoints,
)
from agent.lttng._plan import Step, plan_session
from agent.lttng._session import Session, dir_size
from agent.metrics import Metrics
from agent.settings import Settings

log = logging.getLogger("agent.lttng")  # the package's name, as before the split

WATCHDOG_INTERVAL_S = 1.0
HEALTH_EVERY = 10  # watchdog ticks between health checks of the session daemon
AGENT_DOMAINS = ("python", "jul", "log4j")


def build_daemon(settings: Settings) -> SessionDaemon:
    """The pod's root session daemon as the settings describe it, not yet started.

    The boot starts it before the app is loaded (apps register with it as they start,
    and the app's start waits for the agent's: :mod:`agent.boot`); the service then
    adopts it (:class:`Service`'s ``daemon``)."""
    base = settings.data_dir / "lttng"
    return SessionDaemon(
        cli=Lttng(home=base / "_home"),
        run_dir=settings.lttng_run_dir,
        log_path=base / "_home" / "sessiond.log",
        start_own=settings.lttng_start_sessiond,
        kernel=bool(lttng_kernel()["available"]),
    )


class Service:
    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        daemon: SessionDaemon | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.metrics.lttng_sessions.running.set_function(
            lambda: sum(1 for s in self._sessions.values() if s.state == "active")
        )
        self.metrics.measure_storage(
            "lttng", lambda: sum(dir_size(s.dir)[0] for s in self._sessions.values())
        )
        self.base = settings.data_dir / "lttng"
        instance = settings.instance()
        # Session names in the daemon: unique to this agent instance.
        self.prefix = f"tracecar-{''.join(c for c in instance if c.isalnum() or c in '-_')}-"
        self.kernel = lttng_kernel()
        self.daemon = daemon or build_daemon(settings)
        self.daemon.on_lost = self._daemon_lost
        self.cli = self.daemon.cli
        self._sessions: dict[str, Session] = {}
        self._gone: dict[str, str] = {}  # id -> why it no longer exists (expired)
        self._watchdog: asyncio.Task[None] | None = None
        self._has_sessions = asyncio.Event()
        self._version: str | None = None
        self._native: asyncio.Task[None] | None = None
        self.plugin_dir: Path | None = None
        self.json_converter = "python: the native sink is being located"

    # --- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        """Sweep leftovers of a previous run; start the session daemon and the watchdog."""
        if self.base.exists():
            for p in self.base.iterdir():
                if p.name != "_home":
                    shutil.rmtree(p, ignore_errors=True)
        self.base.mkdir(parents=True, exist_ok=True)
        await self.daemon.start()
        # Before the agent serves, only what must be: the daemon (apps register with it
        # as they start). A daemon we just started holds no leftover session: the sweep
        # is for one that outlived a crashed agent. The version is asked when shown.
        if self.daemon.available and self.daemon.external:
            await self._sweep_daemon()
        self._watchdog = asyncio.create_task(self._watch(), name="lttng-watchdog")
        # In the background: building the sink takes a second of gcc, and start-up
        # must stay fast; until it is there, NDJSON is converted in Python.
        self._native = asyncio.create_task(self._locate_native(), name="lttng-native-sink")

    async def _locate_native(self) -> None:
        try:
            where, how = await _native.locate(
                prebuilt=self.settings.lttng_ndjson_plugin_dir,
                build_dir=self.base / "_home" / "plugins",
            )
        except Exception as e:  # never fatal: the Python converter works everywhere
            log.warning("native NDJSON sink unavailable", extra={"fields": {"error": str(e)}})
            where, how = None, f"python: locating the native sink failed ({e})"
        self.plugin_dir = where
        self.json_converter = f"native sink.tracecar.ndjson ({how})" if where else how
        log.info("LTTng NDJSON converter", extra={"fields": {"converter": self.json_converter}})

    async def stop(self) -> None:
        """Destroy our sessions, remove their files, stop the daemon we started."""
        for task in (self._watchdog, self._native):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for s in list(self._sessions.values()):
            with contextlib.suppress(Exception):
                await self._destroy(s)
        if self.daemon.available:
            with contextlib.suppress(Exception):
                await self._sweep_daemon()
        await self.daemon.stop()

    async def _sweep_daemon(self) -> None:
        """Destroy sessions carrying our prefix that we do not know (a crashed run's)."""
        try:
            listed = await self.cli.list_sessions()
        except (LttngFailed, _proc.ProcError) as e:
            log.warning("cannot list LTTng sessions", extra={"fields": {"error": str(e)}})
            return
        known = {s.lttng_name for s in self._sessions.values()}
        for s in listed:
            if s["name"].startswith(self.prefix) and s["name"] not in known:
                log.info(
                    "destroying a leftover LTTng session", extra={"fields": {"session": s["name"]}}
                )
                with contextlib.suppress(LttngFailed, _proc.ProcError):
                    await self.cli.destroy(s["name"])
                if s["path"].startswith(str(self.base) + os.sep):
                    shutil.rmtree(s["path"], ignore_errors=True)

    async def _daemon_lost(self, why: str) -> None:
        for s in self._sessions.values():
            if s.state != "lost":
                self.metrics.lttng_sessions.failed.inc()
            s.state = "lost"
            s.message = why

    def busy(self) -> bool:
        """A recording session keeps an idle agent alive."""
        return any(s.state == "active" for s in self._sessions.values())

    async def capabilities(self) -> dict[str, object]:
        """What works here for this capability, versions, and why not where it doesn't."""
        ok = self.daemon.available
        if ok and self._version is None:
            with contextlib.suppress(LttngFailed, _proc.ProcError):
                self._version = await self.cli.version()
        daemon_reason = self.daemon.reason or ""
        agent_note = {
            "python": "the app must `import lttngust` (python3-lttngust) after the daemon is up",
            "jul": "the app must add LTTng's JUL handler (org.lttng.ust.agent.jul."
            "LttngLogHandler: liblttng-ust-agent-java and -jni in the app's image)",
            "log4j": "the app must add LTTng's log4j 1.2 appender (org.lttng.ust.agent."
            "log4j.LttngLogAppender: liblttng-ust-agent-java and -jni in the app's image)",
        }
        domains: dict[str, object] = {
            "userspace": {"available": ok, **({"reason": daemon_reason} if not ok else {})},
            **{
                d: {
                    "available": ok,
                    **({"reason": daemon_reason} if not ok else {"note": agent_note[d]}),
                }
                for d in AGENT_DOMAINS
            },
            "kernel": {
                "available": bool(self.kernel["available"]) and ok,
                "reason": self.kernel["reason"],
            },
        }
        return {
            "available": ok,
            **({"reason": daemon_reason} if not ok else {}),
            "version": self._version,
            "sessiond": self.daemon.info(),
            "domains": domains,
            "modes": {
                "normal": {"available": ok},
                "snapshot": {"available": ok},
                "live": {
                    "available": False,
                    "reason": "live mode needs an lttng-relayd and a live viewer; the agent "
                    "does not run one. Use normal mode with rotate, or snapshot mode",
                },
            },
            "limits": {
                "max_sessions": self.settings.max_lttng_sessions,
                "default_max_duration_s": self.settings.lttng_default_max_duration_s,
                "max_duration_s": self.settings.lttng_max_duration_s,
                "max_session_bytes": self.settings.lttng_max_session_bytes,
            },
            "sessions": len(self._sessions),
            "json_converter": self.json_converter,
        }

    # --- helpers -------------------------------------------------------------------
    def _require_daemon(self) -> None:
        if not self.daemon.available:
            raise Unavailable(
                f"LTTng is not usable here: {self.daemon.reason} (see GET /capabilities)"
            )

    def get(self, session_id: str) -> Session:
        s = self._sessions.get(session_id)
        if s is None:
            if session_id in self._gone:
                raise NotFound(f"LTTng session {session_id!r} {self._gone[session_id]}")
            raise NotFound(f"no LTTng session with id {session_id!r} (see GET /lttng/sessions)")
        return s

    # --- tracepoints -----------------------------------------------------------------
    async def tracepoints(self) -> Tracepoints:
        self._require_daemon()
        results = await asyncio.gather(
            *(self.cli.tracepoints(d) for d in ("userspace", *AGENT_DOMAINS)),
            return_exceptions=True,
        )
        processes: list[ProcessTracepoints] = []
        errors: dict[str, str] = {}
        for d, r in zip(("userspace", *AGENT_DOMAINS), results, strict=True):
            if isinstance(r, BaseException):
                errors[d] = str(r)
            else:
                processes.extend(r)
        return Tracepoints(
            processes=processes,
            errors=errors or None,
            note="apps register with the session daemon when they start; an app started "
            "before the daemon registers later only if it uses liblttng-ust directly "
            "(C/C++); Python apps must be restarted (see docs/lttng.md)",
        )

    # --- sessions ----------------------------------------------------------------------
    def plan(self, req: SessionRequest) -> tuple[Session, list[Step]]:
        """Validate against this agent's limits and plan the lttng commands (no I/O)."""
        s = self.settings
        if any(e.domain == "kernel" for e in req.events):
            raise Conflict(
                f"the kernel domain is not available here: {self.kernel['reason']}",
                field="events.domain",
            )
        if req.mode == "live":
            raise Conflict(
                "live mode is not supported by this agent: it needs an lttng-relayd and a "
                "live viewer. Use mode 'normal' (with rotate to read chunks while recording) "
                "or 'snapshot'"
            )
        sized = req.subbuf_size is not None or req.num_subbuf is not None
        if sized and not any(e.domain == "userspace" for e in req.events):
            raise Invalid(
                "subbuf_size/num_subbuf apply to the user-space channel: add a "
                "'userspace' event spec, or leave them out",
                field="subbuf_size",
            )
        max_bytes = req.max_size_bytes or s.lttng_max_session_bytes
        if max_bytes > s.lttng_max_session_bytes:
            raise Invalid(
                f"max_size_bytes must be at most {s.lttng_max_session_bytes} (the agent's limit)",
                field="max_size_bytes",
            )
        duration = req.max_duration_s or s.lttng_default_max_duration_s
        if duration > s.lttng_max_duration_s:
            raise Invalid(
                f"max_duration_s must be at most {s.lttng_max_duration_s:g} (the agent's limit)",
                field="max_duration_s",
            )
        if req.name is not None and any(x.name == req.name for x in self._sessions.values()):
            raise Conflict(f"an LTTng session named {req.name!r} exists already")
        for pid in req.pids:
            procfs.require_pid(pid)
        sid = new_id()
        now = time.time()
        sess = Session(
            id=sid,
            name=req.name or f"session-{sid}",
            lttng_name=f"{self.prefix}{sid}",
            request=req,
            dir=self.base / sid,
            created_at=now,
            expires_at=now + duration,
            max_size_bytes=max_bytes,
        )
        return sess, plan_session(req, session=sess.lttng_name, output=sess.output)

    async def create(
        self, req: SessionRequest, *, dry_run: bool = False
    ) -> SessionPlan | SessionView:
        sess, steps = self.plan(req)
        if dry_run:
            return SessionPlan(
                dry_run=True,
                lttng_name=sess.lttng_name,
                output=str(sess.output),
                commands=[["lttng", *st["args"]] for st in steps],
            )
        self._require_daemon()
        if len(self._sessions) >= self.settings.max_lttng_sessions:
            raise TooMany(
                f"{self.settings.max_lttng_sessions} LTTng session(s) exist already (the "
                "configured limit); DELETE one first"
            )
        sess.dir.mkdir(parents=True)
        self._sessions[sess.id] = sess
        self._has_sessions.set()
        self.metrics.lttng_sessions.started.inc()
        created = False
        try:
            for st in steps:
                try:
                    await self.cli.run(st["args"])
                except LttngFailed as e:
                    raise self._setup_error(st, e) from e
                if st["args"][0] == "create":
                    created = True
                if st["args"][0] == "start":
                    sess.state = "active"
                    sess.started_at = time.time()
        except BaseException as e:
            if isinstance(e, Exception):  # lttng refused the set-up (not a cancellation)
                self.metrics.lttng_sessions.failed.inc()
            self._sessions.pop(sess.id, None)
            if created:
                with contextlib.suppress(LttngFailed, _proc.ProcError):
                    await self.cli.destroy(sess.lttng_name)
            shutil.rmtree(sess.dir, ignore_errors=True)
            raise
        return await self.view(sess)

    @staticmethod
    def _setup_error(step: Step, e: LttngFailed) -> Exception:
        msg = e.message
        is_filter = step["args"][0] == "enable-event" and "--filter" in step["args"]
        if is_filter and ("filter" in msg.lower() or "parse error" in msg.lower()):
            expr = step["args"][step["args"].index("--filter") + 1]
            return Invalid(f"LTTng rejected the filter expression {expr!r}: {msg}", field="filter")
        # A failed tool is a 502 everywhere (agent.errors): lttng hung, or refused.
        if e.returncode < 0:
            return ToolTimedOut(
                f"lttng did not answer while trying to {step['what']}: {msg}", tool="lttng"
            )
        return ToolError(f"LTTng refused to {step['what']}: {msg}", tool="lttng")

    async def action(self, session_id: str, action: Action) -> SessionView:
        sess = self.get(session_id)
        async with sess.lock:
            self._require_daemon()
            st = sess.state
            if st == "lost":
                raise Conflict(f"session {session_id} is lost: {sess.message}")
            if action == "start":
                if st == "active":
                    raise Conflict(f"session {session_id} is already active (recording)")
                if sess.message.startswith("stopped: size cap"):
                    raise Conflict(f"session {session_id} {sess.message}; DELETE it")
                await self._run_action(sess, self.cli.start, "start")
                sess.state = "active"
                sess.started_at = sess.started_at or time.time()
                sess.stopped_at = None
            elif action == "stop":
                if st != "active":
                    raise Conflict(
                        f"session {session_id} is {st}"
                        + (" (never started)" if not sess.ever_started else "")
                        + ": only an active session can be stopped"
                    )
                await self._run_action(sess, self.cli.stop, "stop")
                sess.state = "stopped"
                sess.stopped_at = time.time()
            elif action == "rotate":
                if sess.request.mode != "normal":
                    raise Conflict(
                        f"session {session_id} is in {sess.request.mode} mode: rotate needs "
                        "normal mode (snapshot sessions use /snapshot)"
                    )
                if not sess.ever_started:
                    raise Conflict(
                        f"session {session_id} is {st} (never started): nothing to rotate"
                    )
                await self._run_action(sess, self.cli.rotate, "rotate")
                sess.rotations += 1
            else:  # snapshot
                if sess.request.mode != "snapshot":
                    raise Conflict(
                        f"session {session_id} is in {sess.request.mode} mode: create it with "
                        "mode 'snapshot' to take snapshots"
                    )
                if not sess.ever_started:
                    raise Conflict(f"session {session_id} is {st} (never started): start it first")
                await self._run_action(sess, self.cli.snapshot, "snapshot")
                sess.snapshots += 1
            sess.count_cache = None
        return await self.view(sess)

    async def _run_action(self, sess: Session, fn: Any, what: str) -> None:
        try:
            await fn(sess.lttng_name)
        except LttngFailed as e:
            raise ToolError(
                f"LTTng refused to {what} session {sess.id}: {e.message}", tool="lttng"
            ) from e

    async def delete(self, session_id: str) -> Deleted:
        sess = self.get(session_id)
        async with sess.lock:
            await self._destroy(sess)
        return Deleted(id=sess.id, deleted=True)

    async def _destroy(self, sess: Session, *, why: str | None = None) -> None:
        if sess.state != "lost":
            # Its last discarded-events count, for the metrics, before it is gone.
            with contextlib.suppress(LttngFailed, _proc.ProcError):
                d = await self.cli.session_detail(sess.lttng_name)
                self._count_discarded(sess, sum(c["discarded_events"] for c in d["channels"]))
            try:
                await self.cli.destroy(sess.lttng_name)
            except (LttngFailed, _proc.ProcError) as e:
                log.warning(
                    "destroying a session failed",
                    extra={"fields": {"session": sess.lttng_name, "error": str(e)}},
                )
        shutil.rmtree(sess.dir, ignore_errors=True)
        self._sessions.pop(sess.id, None)
        if why:
            self._gone[sess.id] = why
            while len(self._gone) > 1000:
                self._gone.pop(next(iter(self._gone)))

    def _count_discarded(self, sess: Session, discarded: int) -> None:
        """The daemon's per-session total, as increments of the agent's counter."""
        self.metrics.drop("lttng_discarded", discarded - sess.discarded_counted)
        sess.discarded_counted = max(sess.discarded_counted, discarded)

    def list_sessions(self) -> list[Session]:
        return sorted(self._sessions.values(), key=lambda s: s.created_at)

    async def view(self, sess: Session, *, detail: bool = True) -> SessionView:
        size, mtime = await asyncio.to_thread(dir_size, sess.dir)
        channels: list[ChannelStats] = []
        discarded: int | None = None
        lost: int | None = None
        if detail and sess.state != "lost" and self.daemon.available:
            with contextlib.suppress(LttngFailed, _proc.ProcError):
                d = await self.cli.session_detail(sess.lttng_name)
                channels = d["channels"]
                discarded = sum(c["discarded_events"] for c in channels)
                lost = sum(c["lost_packets"] for c in channels)
                self._count_discarded(sess, discarded)
        events: int | None = None
        if detail and (sess.state in ("stopped", "lost") or sess.request.mode == "snapshot"):
            events = await self._count(sess, size, mtime)
        return SessionView(
            id=sess.id,
            name=sess.name,
            lttng_name=sess.lttng_name,
            mode=sess.request.mode,
            state=sess.state,
            created_at=sess.created_at,
            expires_at=sess.expires_at,
            started_at=sess.started_at,
            stopped_at=sess.stopped_at,
            max_size_bytes=sess.max_size_bytes,
            size_bytes=size,
            discarded_events=discarded,
            lost_packets=lost,
            events=events,
            channels=channels,
            snapshots=sess.snapshots,
            rotations=sess.rotations,
            message=sess.message,
            request=sess.request,
        )

    async def _count(self, sess: Session, size: int, mtime: float) -> int | None:
        trace = self._trace_dir(sess)
        if trace is None:
            return 0
        key = (size, mtime)
        if sess.count_cache is not None and sess.count_cache[0] == key:
            return sess.count_cache[1]
        try:
            n = await _read.count_events(trace)
        except _proc.ProcError:
            return None
        sess.count_cache = (key, n)
        return n

    # --- reading ---------------------------------------------------------------------
    def _trace_dir(self, sess: Session) -> Path | None:
        """What to read: the latest snapshot of a snapshot session, else the output."""
        if not sess.output.exists():
            return None
        if sess.request.mode == "snapshot":
            snaps = sorted(
                (p for p in sess.output.iterdir() if p.name.startswith("snapshot-")),
                key=lambda p: p.stat().st_mtime,
            )
            return snaps[-1] if snaps else None
        return sess.output if _read.has_trace([sess.output]) else None

    def readable_trace(self, session_id: str) -> tuple[Session, Path]:
        sess = self.get(session_id)
        if sess.state == "active" and sess.request.mode == "normal":
            raise Conflict(
                f"session {session_id} is active: stop it first (or rotate: the rotated "
                "chunks are complete, but reading the live files gives a partial trace)"
            )
        trace = self._trace_dir(sess)
        if trace is None:
            what = (
                "no snapshot taken yet: POST .../snapshot first"
                if sess.request.mode == "snapshot"
                else "nothing recorded yet"
            )
            raise Conflict(f"session {session_id} has no trace: {what}")
        return sess, trace

    async def trace_archive(self, session_id: str) -> tuple[Path, str]:
        sess, trace = self.readable_trace(session_id)
        dest = sess.dir / "trace.tar.gz"
        async with sess.lock:
            arcname = f"{sess.name}"
            with atomic_path(dest) as tmp:
                await asyncio.to_thread(_read.write_tar, trace, tmp, arcname=arcname)
        return dest, f"{sess.name}.tar.gz"

    def events(
        self,
        session_id: str,
        *,
        fmt: Format,
        offset: int,
        limit: int | None,
        begin_ns: int | None,
        end_ns: int | None,
    ) -> AsyncIterator[bytes]:
        _sess, trace = self.readable_trace(session_id)
        if begin_ns is not None and end_ns is not None and end_ns < begin_ns:
            raise Invalid("end_ns must not be before begin_ns", field="end_ns")
        return _read.stream_events(
            trace,
            fmt=fmt,
            offset=offset,
            limit=limit,
            begin_ns=begin_ns,
            end_ns=end_ns,
            plugin_dir=self.plugin_dir,
        )

    # --- the bounds ------------------------------------------------------------------
    async def _watch(self) -> None:
        ticks = 0
        while True:
            if not self._sessions:
                # Nothing to bound: sleep until a session exists (an idle agent wakes
                # for nothing). The daemon's own supervisor still restarts it if it dies.
                self._has_sessions.clear()
                await self._has_sessions.wait()
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            ticks += 1
            try:
                await self._enforce()
                if ticks % HEALTH_EVERY == 0:
                    await self.daemon.check()
            except Exception:
                log.exception("LTTng watchdog")

    async def _enforce(self) -> None:
        now = time.time()
        for sess in list(self._sessions.values()):
            if now >= sess.expires_at:
                async with sess.lock:
                    log.info(
                        "LTTng session expired: destroying it",
                        extra={"fields": {"session": sess.id}},
                    )
                    await self._destroy(
                        sess,
                        why=f"expired at {time.strftime('%H:%M:%S', time.gmtime(sess.expires_at))}"
                        " UTC (its max_duration_s) and was destroyed with its files",
                    )
                continue
            if sess.state == "active":
                size, _ = await asyncio.to_thread(dir_size, sess.output)
                if size > sess.max_size_bytes:
                    async with sess.lock:
                        with contextlib.suppress(LttngFailed, _proc.ProcError):
                            await self.cli.stop(sess.lttng_name)
                        sess.state = "stopped"
                        sess.stopped_at = time.time()
                        sess.message = (
                            f"stopped: size cap reached ({size} bytes > max_size_bytes "
                            f"{sess.max_size_bytes})"
                        )
