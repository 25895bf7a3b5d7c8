"""Sinks: the configured stores, what the API hands them, and their shutdown flush.

:class:`Sinks` (constructed, started and flushed by :mod:`agent.app`) holds one
:class:`agent.sinks._sink.Sink` per configured store (``pyroscope`` for profiles,
``s3`` for artifacts and a copy of each pushed profile), the continuous pusher
when one runs, and the background tasks that publish a profile once it is done
(``"push": true`` on ``POST /profiles``, a pushing trigger's captures).
Spools live under ``SPOOL_DIR/<sink>/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from agent import profiling
from agent.errors import Conflict, NotFound
from agent.metrics import Metrics
from agent.settings import Settings
from agent.sinks._continuous import Continuous
from agent.sinks._labels import ProfileKind, Source, object_key, pod_labels, profile_labels
from agent.sinks._sink import Sink, SinkStatus
from agent.sinks._spool import DropReason, TooLarge

if TYPE_CHECKING:
    from agent.sinks._pyroscope import PyroscopeSender
    from agent.sinks._s3 import S3Sender

log = logging.getLogger(__name__)

SINK_NAMES = ("pyroscope", "s3")
UPLOAD_WAIT_S = 30.0
"""How long an upload request waits for a healthy store before answering "spooled"."""
TRIGGER_POLL_S = 1.0

_NOT_CONFIGURED = {
    "pyroscope": "no profile store: set TRACECAR_AGENT_PYROSCOPE_URL",
    "s3": "no object store: set TRACECAR_AGENT_S3_BUCKET (and TRACECAR_AGENT_S3_ENDPOINT "
    "for an S3-compatible store)",
}


class SinkOff(BaseModel):
    """A store this agent has no settings for."""

    configured: Literal[False]
    state: Literal["disabled"]
    last_success: None
    last_error: None
    queued_bytes: int
    dropped: int
    reason: str = Field(description="the settings that would configure it")


class SinksStatus(BaseModel):
    """The ``sinks`` section of ``GET /capabilities``: each store's sink."""

    pyroscope: SinkStatus | SinkOff = Field(description="profiles (Grafana Pyroscope)")
    s3: SinkStatus | SinkOff = Field(description="artifacts and profile copies (S3)")


class Upload(BaseModel):
    """Where the artifact went. ``stored``: the store has it; ``spooled``: it waits in the
    agent's spool for a store that is down or slow, and is sent when it answers."""

    key: str = Field(description="the object's key in the bucket")
    bucket: str
    size: int = Field(description="bytes")
    state: Literal["stored", "spooled"]
    sink: str = Field(description="the object sink's state: ok, retrying, failing")
    last_error: str | None = Field(default=None, description="why it is only spooled")
    url: str | None = Field(default=None, description="with presign=true: a presigned GET URL")
    url_expires_in_s: int | None = None


class Sinks:
    def __init__(self, settings: Settings, *, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.base_labels = pod_labels(settings)
        self.spool_dir = settings.spool_dir or settings.data_dir / "spool"
        self.pyroscope: Sink | None = None
        self.s3: Sink | None = None
        self.s3_sender: S3Sender | None = None
        self.continuous: Continuous | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        if settings.pyroscope_url:
            # httpx (the Pyroscope client) only when Pyroscope is configured, as boto3 below
            from agent.sinks._pyroscope import PyroscopeSender

            self.pyroscope = self._sink(
                PyroscopeSender(
                    settings.pyroscope_url,
                    tenant=settings.pyroscope_tenant,
                    user_file=settings.pyroscope_user_file,
                    password_file=settings.pyroscope_password_file,
                    token_file=settings.pyroscope_token_file,
                    timeout_s=settings.sink_timeout_s,
                )
            )
        if settings.s3_bucket:
            # boto3 only when S3 is configured: importing it costs ~13 MB of RSS, which
            # an attached agent under a small memory limit cannot spare.
            from agent.sinks._s3 import S3Sender

            self.s3_sender = S3Sender(
                bucket=settings.s3_bucket,
                endpoint=settings.s3_endpoint,
                region=settings.s3_region,
                path_style=settings.s3_path_style,
                timeout_s=settings.sink_timeout_s,
            )
            self.s3 = self._sink(self.s3_sender)
        for name in SINK_NAMES:
            metrics.sink_queued_bytes.labels(name).set_function(self._queued(name))

    def _queued(self, name: str) -> Callable[[], float]:
        def queued() -> float:
            sink: Sink | None = getattr(self, name)
            return float(sink.spool.queued_bytes) if sink is not None else 0.0

        return queued

    def _sink(self, sender: PyroscopeSender | S3Sender) -> Sink:
        return Sink(
            sender,
            self.spool_dir / sender.name,
            max_bytes=self.settings.spool_max_bytes,
            max_age_s=self.settings.spool_max_age_s,
            on_drop=self._count_drop,
            on_sent=self._count_sent,
        )

    def _count_drop(self, sink: str, reason: DropReason) -> None:
        self.metrics.sink_dropped.labels(sink, reason).inc()

    def _count_sent(self, sink: str, size: int) -> None:
        self.metrics.sink_sent.labels(sink).inc()
        self.metrics.sink_sent_bytes.labels(sink).inc(size)

    def _sinks(self) -> list[Sink]:
        return [s for s in (self.pyroscope, self.s3) if s is not None]

    # --- life ---------------------------------------------------------------------------
    async def start(self) -> None:
        for sink in self._sinks():
            await sink.start()

    async def stop(self) -> None:
        """Shutdown, after the recorder and the jobs have stopped: publish what finished,
        then flush the spools within the budget."""
        deadline = time.monotonic() + self.settings.flush_budget_s
        await self.stop_continuous()  # normally done already, before the recorder stopped
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=max(deadline - time.monotonic(), 0.1))
            for t in late:
                t.cancel()
        for sink in self._sinks():
            await sink.flush_and_stop(max(deadline - time.monotonic(), 0.0))

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- what /capabilities shows -----------------------------------------------------------
    def status(self) -> SinksStatus:
        out: dict[str, SinkStatus | SinkOff] = {}
        for name in SINK_NAMES:
            sink: Sink | None = getattr(self, name)
            if sink is None:
                out[name] = SinkOff(
                    configured=False,
                    state="disabled",
                    last_success=None,
                    last_error=None,
                    queued_bytes=0,
                    dropped=0,
                    reason=_NOT_CONFIGURED[name],
                )
            else:
                out[name] = sink.status()
        return SinksStatus(**out)

    def require(self, name: Literal["pyroscope", "s3"]) -> Sink:
        sink: Sink | None = getattr(self, name)
        if sink is None:
            raise Conflict(f'"push" needs a store, and this agent has {_NOT_CONFIGURED[name]}')
        return sink

    def require_profile_sink(self) -> None:
        """``"push": true`` on a profile or a trigger: some store must take it."""
        if self.pyroscope is None and self.s3 is None:
            raise Conflict(
                f'"push" needs a store, and this agent has {_NOT_CONFIGURED["pyroscope"]}, '
                f"and {_NOT_CONFIGURED['s3']}"
            )

    # --- continuous profiling ------------------------------------------------------------
    def start_continuous(self, recorder: profiling.FlightRecorder) -> None:
        sink = self.require("pyroscope")
        if self.continuous is not None and self.continuous.running:
            self._spawn(self.continuous.stop(final=False), "continuous-replaced")
        self.continuous = Continuous(
            recorder,
            sink,
            base_labels=self.base_labels,
            interval_s=self.settings.continuous_interval_s,
        )
        self.continuous.start()

    async def stop_continuous(self) -> None:
        """DELETE /recorder and shutdown: the last partial interval goes to the spool."""
        continuous, self.continuous = self.continuous, None
        if continuous is not None:
            await continuous.stop(final=True)

    def continuous_status(self) -> profiling.ContinuousPushes | None:
        return self.continuous.status() if self.continuous is not None else None

    # --- profiles ------------------------------------------------------------------------
    def publish_when_done(
        self,
        svc: profiling.Service,
        job: profiling.ProfileJob,
        *,
        source: Source,
        extra: dict[str, str],
    ) -> None:
        """Push ``job``'s profile once it has succeeded (a background task)."""

        async def publish() -> None:
            await svc.wait(job)
            await self.publish(job, source=source, extra=extra)

        self._spawn(publish(), f"publish-{job.id}")

    async def publish(
        self, job: profiling.ProfileJob, *, source: Source, extra: dict[str, str]
    ) -> None:
        if job.state != "succeeded":
            log.info("nothing to push", extra={"fields": {"profile": job.id, "state": job.state}})
            return
        path = job.artifact(profiling.PPROF)
        kind: ProfileKind = "off-cpu" if job.params.get("type") == "off-cpu" else "cpu"
        labels = profile_labels(
            self.base_labels,
            kind=kind,
            source=source,
            container=job.params.get("container"),
            extra={"profile_id": job.id, **extra},
        )
        meta = job.result
        window = {"from": meta.recording_started_at, "to": meta.recording_finished_at}
        try:
            if self.pyroscope is not None:
                await self.pyroscope.put_file(path, {"labels": labels, **window})
            if self.s3 is not None:
                key = object_key(self.settings.s3_prefix, self.base_labels, "profiles", job.id)
                await self.s3.put_file(
                    path,
                    {
                        "key": f"{key}/{profiling.PPROF}",
                        "content_type": "application/octet-stream",
                        "labels": labels,
                    },
                )
        except (OSError, TooLarge) as e:
            log.warning(
                "profile not pushed", extra={"fields": {"profile": job.id, "error": str(e)}}
            )

    def follow_trigger(
        self, triggers: profiling.Triggers, svc: profiling.Service, trigger: profiling.Trigger
    ) -> None:
        """Push each capture of ``trigger`` once its profile is done, with the trigger's
        id and reason as labels, until the trigger ends or is deleted."""
        extra = {"trigger_id": trigger.id, "trigger_reason": trigger.request.reason()}

        async def follow() -> None:
            published: set[str] = set()
            while True:
                for capture in list(trigger.captures):
                    profile_id = capture.profile_id
                    if profile_id in published:
                        continue
                    try:
                        job = svc.jobs.get(profiling.KIND, profile_id)
                    except NotFound:  # deleted or evicted before it was pushed
                        published.add(profile_id)
                        continue
                    if job.finished:
                        published.add(profile_id)
                        await self.publish(job, source="trigger", extra=extra)
                ended = trigger.state in ("done", "failed") or trigger not in triggers.list()
                if ended and all(c.profile_id in published for c in trigger.captures):
                    return
                if trigger not in triggers.list() and trigger.state not in ("done", "failed"):
                    return
                await asyncio.sleep(TRIGGER_POLL_S)

        self._spawn(follow(), f"follow-trigger-{trigger.id}")

    # --- artifacts --------------------------------------------------------------------------
    async def upload(
        self, path: Path, *, parts: tuple[str, ...], content_type: str, presign: bool
    ) -> Upload:
        """Spool ``path`` for the object store under ``PREFIX/NS/POD/<parts>``; wait (bounded)
        for a healthy store to take it. The answer says which: ``stored`` or ``spooled``."""
        sink = self.require("s3")
        assert self.s3_sender is not None
        key = object_key(self.settings.s3_prefix, self.base_labels, *parts)
        try:
            item = await sink.put_file(path, {"key": key, "content_type": content_type})
        except TooLarge as e:
            raise Conflict(f"cannot upload {path.name}: {e}") from e
        stored = await sink.delivered(item, UPLOAD_WAIT_S if sink.healthy else 0.0)
        out = Upload(
            key=key,
            bucket=self.s3_sender.bucket,
            size=item.size,
            state="stored" if stored else "spooled",
            sink=sink.state,
        )
        if not stored and sink.last_error:
            out.last_error = sink.last_error
        if presign:
            expiry = self.settings.s3_presign_expiry_s
            with contextlib.suppress(Exception):
                out.url = await asyncio.to_thread(self.s3_sender.presign, key, expiry)
                out.url_expires_in_s = expiry
        return out
