"""The root ``lttng-sessiond`` of the pod: started, health-checked, restarted, stopped.

The daemon runs in the foreground as an :class:`agent._proc.Child` (never
``--daemonize``: then it would not be our child, and could not be reaped or
watched). Its sockets live in ``/var/run/lttng`` (compiled into LTTng for the
root daemon), which the webhook mounts as an emptyDir shared with every app
container: liblttng-ust and the Python/Java agents find the daemon there.

The service's watchdog calls :meth:`SessionDaemon.check` every 10 s (``lttng
list`` must answer; three failures in a row and the daemon is killed). A
supervisor task waits on the child; if it dies unexpectedly it kills what is
left of its process group (``lttng-consumerd``), tells the service (whose
sessions died with it) and starts a new one, backing off up to 30 s. If a
daemon is already answering when the agent starts (the app's own, or
``lttng_start_sessiond`` is false and one runs anyway), it is used and never
stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent import _proc
from agent.lttng._cli import Lttng, LttngFailed

log = logging.getLogger(__name__)

#: Where LTTng's root session daemon puts its sockets (a compile-time default).
ROOT_RUN_DIR = Path("/var/run/lttng")
READY_TIMEOUT_S = 10.0
HEALTH_TIMEOUT_S = 5.0


def _same_dir(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        return a.resolve() == b.resolve()
    return False


def consumerd_pids(pgid: int) -> list[int]:
    """``lttng-consumerd`` processes still in the daemon's process group."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            if not comm.startswith("lttng-consumer"):
                continue
            if os.getpgid(int(entry)) == pgid:
                pids.append(int(entry))
        except (OSError, ProcessLookupError):
            continue
    return pids


class SessionDaemon:
    def __init__(
        self,
        *,
        cli: Lttng,
        run_dir: Path,
        log_path: Path,
        start_own: bool,
        kernel: bool,
        on_lost: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.cli = cli
        self.run_dir = run_dir
        self.log_path = log_path
        self.start_own = start_own
        self.kernel = kernel
        # The service that owns the sessions sets this when it adopts the daemon (the
        # boot may start the daemon before the service exists: agent.boot).
        self.on_lost = on_lost
        self._started = False
        self.child: _proc.Child | None = None
        self.external = False
        self.restarts = 0
        self.reason: str | None = "not started yet"
        self.started_at: float | None = None
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self.last_check: float | None = None
        self.last_check_ok: bool | None = None
        self.failed_checks = 0

    @property
    def available(self) -> bool:
        return self.reason is None

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None and self.child.returncode is None else None

    async def answers(self) -> bool:
        """Health check: the client socket is there and ``lttng list`` gets an answer."""
        if not (ROOT_RUN_DIR / "client-lttng-sessiond").exists():
            return False
        try:
            await self.cli.run(["list"], mi=True, timeout_s=HEALTH_TIMEOUT_S)
        except (LttngFailed, _proc.ProcError):
            return False
        return True

    async def check(self) -> None:
        """Periodic health check: a daemon that stops answering is killed and restarted.

        Three failed checks in a row (the watchdog checks every 10 s) and a daemon of
        ours is SIGKILLed; the supervisor then starts a new one.
        """
        if not self.available:
            return
        ok = await self.answers()
        self.last_check = time.time()
        self.last_check_ok = ok
        self.failed_checks = 0 if ok else self.failed_checks + 1
        if self.failed_checks >= 3 and self.child is not None and not self.external:
            log.error("lttng-sessiond stopped answering: killing it for a restart")
            self.failed_checks = 0
            self.child.send_signal(signal.SIGKILL)

    async def start(self) -> None:
        """Start (or adopt) the daemon. Once: the boot starts it before the app is
        loaded (:mod:`agent.boot`), and the LTTng service's start finds it running."""
        if self._started:
            return
        self._started = True
        if not _same_dir(self.run_dir, ROOT_RUN_DIR):
            self.reason = (
                f"the root lttng-sessiond always uses {ROOT_RUN_DIR}; lttng_run_dir is "
                f"{self.run_dir}: mount the shared emptyDir at {ROOT_RUN_DIR} instead"
            )
            return
        if _proc.which("lttng-sessiond") is None or _proc.which("lttng") is None:
            self.reason = "lttng-tools is not installed (lttng, lttng-sessiond not on PATH)"
            return
        if await self.answers():
            self.external = True
            self.reason = None
            log.info(
                "using the lttng-sessiond already running",
                extra={"fields": {"run_dir": str(ROOT_RUN_DIR)}},
            )
            return
        if not self.start_own:
            self.reason = (
                "no lttng-sessiond answers in /var/run/lttng and starting one is disabled "
                "(TRACECAR_AGENT_LTTNG_START_SESSIOND=false)"
            )
            return
        await asyncio.to_thread(ROOT_RUN_DIR.mkdir, parents=True, exist_ok=True)
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="lttng-sessiond")

    async def _spawn(self) -> None:
        argv = ["lttng-sessiond"]
        if not self.kernel:
            argv.append("--no-kernel")  # no lttng-modules: don't try (and log) loading them
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as logf:
            self.child = await _proc.Child.start(
                argv, stdout=logf.fileno(), stderr=logf.fileno(), env=self.cli.env()
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.child.returncode is not None:
                break
            if await self.answers():
                self.reason = None
                self.started_at = time.time()
                self.last_check_ok = None
                self.failed_checks = 0
                log.info("lttng-sessiond running", extra={"fields": {"pid": self.child.pid}})
                return
            await asyncio.sleep(0.05)
        tail = self._log_tail()
        await self._kill_group()
        self.reason = f"lttng-sessiond did not come up within {READY_TIMEOUT_S:g} s: {tail}"
        log.error("lttng-sessiond unavailable", extra={"fields": {"reason": self.reason}})

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " / ".join(lines[-5:]) or "(it printed nothing)"

    async def _kill_group(self) -> None:
        child = self.child
        if child is None:
            return
        pgid = child.pid
        await child.stop(signal.SIGTERM, grace=5.0)
        # Child.stop SIGKILLs the group; anything that escaped it is named here.
        for pid in consumerd_pids(pgid):
            log.warning("killing a stray lttng-consumerd", extra={"fields": {"pid": pid}})
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    async def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping:
            child = self.child
            if child is not None and child.returncode is None:
                with contextlib.suppress(Exception):
                    await child.wait()
            if self._stopping:
                return
            rc = child.returncode if child is not None else None
            self.reason = f"lttng-sessiond exited (status {rc}); restarting"
            log.error(
                "lttng-sessiond exited",
                extra={"fields": {"status": rc, "log_tail": self._log_tail()}},
            )
            await self._kill_group()
            with contextlib.suppress(Exception):
                if self.on_lost is not None:
                    await self.on_lost(
                        f"the session daemon died (status {rc}) and was restarted; "
                        "the session is gone from it, its recorded files are kept until expiry"
                    )
            await asyncio.sleep(backoff)
            if self._stopping:
                return
            self.restarts += 1
            await self._spawn()
            backoff = 1.0 if self.available else min(backoff * 2, 30.0)

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
        if self.child is not None and not self.external:
            await self._kill_group()
        self.reason = "stopped"

    def info(self) -> dict[str, object]:
        return {
            "running": self.available,
            "pid": self.pid,
            "external": self.external,
            "restarts": self.restarts,
            "run_dir": str(ROOT_RUN_DIR),
            "started_at": self.started_at,
            "last_health_check": self.last_check,
            "last_health_check_ok": self.last_check_ok,
            **({"reason": self.reason} if self.reason else {}),
        }
