"""Background jobs and their artifacts on disk, shared by every capability.

A job (a CPU profile, a probe, an LTTng session) has an id, a kind, a state and a
directory ``DATA_DIR/<kind>/<id>/`` holding its artifacts and ``job.json``. This
module owns:

* the state machine ``pending -> running -> succeeded | failed | cancelled``;
* the job's typed result (``Job[R]``: a capability registers its pydantic model with
  :meth:`JobStore.register`, so ``job.json`` is read back as that model, not as a
  dict of strings), and :func:`later`, the field of a result that the job fills as
  it goes and that the API shows only once it is filled;
* running the job's coroutine as a task, turning any exception into a ``failed``
  state with a message (never a silent death), and waiting for its end;
* what every kind's view shows of a job (:func:`shown`);
* atomic artifact writes (``*.part`` then rename: a reader never sees half a file);
* storage limits: when the artifacts of all jobs exceed ``max_storage_bytes`` the
  oldest finished jobs are evicted; a running job's files never are;
* start-up: leftovers of a crashed agent (``*.part`` files, jobs that were running)
  are swept and marked failed with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Generic, Literal, TypeAlias, TypedDict, TypeVar

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from agent.errors import NotFound, TooMany

log = logging.getLogger(__name__)

State = Literal["pending", "running", "succeeded", "failed", "cancelled"]
FINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
_PART = ".part"
_RUNTIME = frozenset({"task", "stop_requested"})  # in memory only, never in job.json
_JOB_ID = re.compile(r"[0-9a-f]{12}")  # what new_id() makes
R = TypeVar("R")
T = TypeVar("T")
Later: TypeAlias = T | SkipJsonSchema[None]
"""The type of a :func:`later` field: ``T`` once set; the schema says ``T`` (never null)."""


@dataclass
class Job(Generic[R]):
    id: str
    kind: str
    dir: Path
    params: dict[str, Any]
    result: R
    """What the job found out: its kind's model (``JobStore.register``)."""
    state: State = "pending"
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    progress: float = 0.0
    message: str = ""
    error: str | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False, compare=False)
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.state in FINAL

    def artifact(self, name: str) -> Path:
        return self.dir / name

    def size_bytes(self) -> int:
        total = 0
        with contextlib.suppress(FileNotFoundError):
            for p in self.dir.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    total += p.stat().st_size
        return total

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies every field, and a running job's
        # task and event cannot be copied (that broke saving a started job).
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _RUNTIME}
        d["dir"] = str(self.dir)
        if isinstance(self.result, BaseModel):
            d["result"] = self.result.model_dump(mode="json")
        return d


class Shown(TypedDict):
    """What every kind's view shows of a job (the view adds its kind's fields, links)."""

    id: str
    state: State
    progress: float
    error: str | None
    created_at: float
    finished_at: float | None


def shown(job: Job[Any]) -> Shown:
    return Shown(
        id=job.id,
        state=job.state,
        progress=round(job.progress, 3),
        error=job.error,
        created_at=job.created_at,
        finished_at=job.finished_at,
    )


async def ended(job: Job[Any]) -> bool:
    """Wait for the job's end (a ``wait=true`` request); shielded, so a client that goes
    away does not cancel the job. False when it never ran (no task)."""
    if job.task is None:
        return False
    await asyncio.shield(job.task)
    return True


def _unset(value: object) -> bool:
    return value is None


def later(description: str) -> Any:
    """A result field (typed ``Later[T]``) the job fills as it runs: None until then, and
    left out of the JSON while it is None, so the answer names only what the job has
    found out so far; a key's absence means "not yet" (as when results were dicts)."""
    return Field(default=None, exclude_if=_unset, description=description)


def new_id() -> str:
    return secrets.token_hex(6)


def _is_job_dir(path: Path) -> bool:
    return path.is_dir() and _JOB_ID.fullmatch(path.name) is not None


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it into place only on success."""
    tmp = final.with_name(final.name + _PART)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_atomic(final: Path, data: bytes | str) -> None:
    with atomic_path(final) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)


class JobStore:
    """Jobs of every kind, in memory and in ``data_dir``."""

    def __init__(self, data_dir: Path, *, max_storage_bytes: int) -> None:
        self.data_dir = data_dir
        self.max_storage_bytes = max_storage_bytes
        self._jobs: dict[str, Job[Any]] = {}
        self._results: dict[str, type[BaseModel]] = {}

    def register(self, kind: str, result: type[BaseModel]) -> None:
        """``kind``'s jobs carry a ``result`` of this model (read back from job.json as it)."""
        self._results[kind] = result

    # --- lifecycle -------------------------------------------------------
    def load(self) -> None:
        """Sweep a previous run's leftovers and reload finished jobs' metadata."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for kind_dir in sorted(p for p in self.data_dir.iterdir() if p.is_dir()):
            # Only directories named like a job id are ours: a capability may keep its
            # own state next to its jobs (the LTTng service's ``lttng/_home``).
            for job_dir in sorted(p for p in kind_dir.iterdir() if _is_job_dir(p)):
                for part in job_dir.glob("*" + _PART):
                    part.unlink(missing_ok=True)
                meta = job_dir / "job.json"
                try:
                    raw = json.loads(meta.read_text(encoding="utf-8"))
                    model = self._results.get(raw["kind"])
                    result = raw.get("result", {})
                    job: Job[Any] = Job(
                        id=raw["id"],
                        kind=raw["kind"],
                        dir=job_dir,
                        params=raw.get("params", {}),
                        state=raw.get("state", "failed"),
                        created_at=raw.get("created_at", 0.0),
                        started_at=raw.get("started_at"),
                        finished_at=raw.get("finished_at"),
                        progress=raw.get("progress", 0.0),
                        message=raw.get("message", ""),
                        error=raw.get("error"),
                        result=result if model is None else model.model_validate(result),
                    )
                except (OSError, ValueError, KeyError, TypeError):  # ValidationError included
                    log.warning(
                        "removing unreadable job directory",
                        extra={"fields": {"dir": str(job_dir)}},
                    )
                    shutil.rmtree(job_dir, ignore_errors=True)
                    continue
                if not job.finished:
                    job.state = "failed"
                    job.error = "the agent restarted while this job was running"
                    job.finished_at = time.time()
                    self.save(job)
                self._jobs[job.id] = job

    async def shutdown(self, grace: float = 10.0) -> None:
        """Ask running jobs to stop (they keep what they recorded), then wait for them."""
        running = [j for j in self._jobs.values() if j.task is not None and not j.task.done()]
        for j in running:
            j.stop_requested.set()
        tasks = [j.task for j in running if j.task is not None]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=grace)

    # --- queries ---------------------------------------------------------
    def get(self, kind: str, job_id: str) -> Job[Any]:
        job = self._jobs.get(job_id)
        if job is None or job.kind != kind:
            raise NotFound(f"no {kind} job with id {job_id!r}")
        return job

    def of_kind(self, kind: str) -> list[Job[Any]]:
        return sorted(
            (j for j in self._jobs.values() if j.kind == kind), key=lambda j: j.created_at
        )

    def running(self, kind: str) -> list[Job[Any]]:
        return [j for j in self._jobs.values() if j.kind == kind and not j.finished]

    # --- mutations -------------------------------------------------------
    def create(
        self, kind: str, params: dict[str, Any], *, result: R, max_running: int | None = None
    ) -> Job[R]:
        if max_running is not None and len(self.running(kind)) >= max_running:
            raise TooMany(
                f"{max_running} {kind} job(s) already running (the configured limit); "
                "wait for one to finish or stop it with DELETE"
            )
        job_id = new_id()
        job_dir = self.data_dir / kind / job_id
        job_dir.mkdir(parents=True, exist_ok=False)
        job = Job(id=job_id, kind=kind, dir=job_dir, params=params, result=result)
        self._jobs[job_id] = job
        self.save(job)
        return job

    def save(self, job: Job[Any]) -> None:
        with contextlib.suppress(FileNotFoundError):
            write_atomic(job.dir / "job.json", json.dumps(job.to_dict(), indent=1))

    def start(self, job: Job[R], work: Callable[[Job[R]], Awaitable[None]]) -> None:
        """Run ``work(job)`` as a task; its outcome becomes the job's final state."""

        async def runner() -> None:
            job.state = "running"
            job.started_at = time.time()
            self.save(job)
            try:
                await work(job)
            except asyncio.CancelledError:
                job.state = "cancelled"
                job.error = job.error or "cancelled"
            except Exception as e:  # every failure becomes a state with a message
                log.exception("job failed", extra={"fields": {"kind": job.kind, "job": job.id}})
                job.state = "failed"
                job.error = str(e) or type(e).__name__
            else:
                if job.state == "running":
                    job.state = "succeeded"
                    job.progress = 1.0
            finally:
                job.finished_at = time.time()
                self.save(job)
                self.evict()

        job.task = asyncio.create_task(runner(), name=f"{job.kind}-{job.id}")

    async def delete(self, job: Job[Any]) -> None:
        if job.task is not None and not job.task.done():
            job.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await job.task
        self._jobs.pop(job.id, None)
        shutil.rmtree(job.dir, ignore_errors=True)

    def evict(self) -> list[str]:
        """Remove the oldest finished jobs until storage is within the limit."""
        jobs = sorted(self._jobs.values(), key=lambda j: j.created_at)
        total = sum(j.size_bytes() for j in jobs)
        evicted: list[str] = []
        for j in jobs:
            if total <= self.max_storage_bytes:
                break
            if not j.finished:
                continue
            total -= j.size_bytes()
            self._jobs.pop(j.id, None)
            shutil.rmtree(j.dir, ignore_errors=True)
            evicted.append(j.id)
            log.info(
                "evicted a finished job (storage limit)",
                extra={"fields": {"kind": j.kind, "job": j.id, "limit": self.max_storage_bytes}},
            )
        return evicted
