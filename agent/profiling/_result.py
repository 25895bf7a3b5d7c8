"""What a profile job finds out (its typed result), and how the API shows a profile.

:class:`ProfileResult` is the profile job's ``Job.result`` (``Job[ProfileResult]``):
the plan it ran, the recording's times and counts, each target, the notes, where
the names came from, what stayed unresolved. The service fills it as the job runs;
``job.json`` keeps it, read back as this model. :class:`ProfileView` is the answer
of ``GET /profiles/{id}`` (and of every route that answers a profile), with the
progress the service computes; both give ``/openapi.json`` real schemas.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from agent.jobs import State
from agent.profiling._flight_ring import RssTrend
from agent.profiling.planner import Plan, UnwindChoice

Phase = Literal["pending", "recording", "post-processing", "done"]


class PySpyOutcome(BaseModel):
    """How one py-spy recording went."""

    pid: int
    ok: bool
    samples: int
    errors: int = Field(description="samples py-spy could not take (counted, dropped)")
    exited: bool
    message: str | None = Field(default=None, description="py-spy's own words, if any")


class TargetSeen(BaseModel):
    """A target as it was when the recording ended (``exited``: gone by then)."""

    pid: int
    exited: bool = False
    comm: str | None = None
    container: str | None = None
    runtime: str | None = None
    runtime_version: str | None = None
    perf_map: bool | None = None
    exe: str | None = None


class Unresolved(BaseModel):
    """Samples with frames no name was found for, by object, and the reasons known."""

    samples_with_unresolved_frames: int
    fraction: float
    by_object: dict[str, int]
    reasons: list[str]
    perf_maps_used: list[str]


class DwarfStats(BaseModel):
    """off-cpu, dwarf: what perf script's time weighting saw (see docs/profiling.md)."""

    stacks: int = 0
    matched: int = 0
    open_at_end: int = 0
    unmatched: int = 0
    cut_short: int = 0
    no_user_stack: int = 0
    period: int = 1


class RssTrendView(BaseModel):
    """One process's resident memory over an interval (the seconds that have it)."""

    pid: int
    comm: str
    first_at: int = Field(description="Unix second of the first reading")
    last_at: int = Field(description="Unix second of the last reading")
    first_bytes: int
    last_bytes: int
    min_bytes: int
    max_bytes: int
    growth_bytes: int = Field(description="last - first")
    growth_mib_per_min: float = Field(description="from the first to the last second")

    @classmethod
    def of(cls, t: RssTrend) -> RssTrendView:
        return cls(
            pid=t.pid,
            comm=t.comm,
            first_at=t.first_at,
            last_at=t.last_at,
            first_bytes=t.first_bytes,
            last_bytes=t.last_bytes,
            min_bytes=t.min_bytes,
            max_bytes=t.max_bytes,
            growth_bytes=t.growth_bytes,
            growth_mib_per_min=round(t.mib_per_min, 3),
        )


class ProfileResult(BaseModel):
    """A profile job's result: filled as it runs, kept in ``job.json``."""

    phase: Phase = "pending"
    plan: Plan | None = Field(default=None, description="what ran (the dry run's plan)")
    recording_started_at: float | None = None
    recording_finished_at: float | None = None
    samples: int | None = Field(default=None, description="cpu: samples recorded")
    lost_samples: int | None = Field(default=None, description="cpu: perf's lost chunks")
    dropped_samples: int | None = Field(default=None, description="cpu: py-spy's errors")
    folded_samples: int | None = Field(
        default=None, description="cpu: samples in the folded stacks; off-cpu: stacks"
    )
    stopped_early: bool = False
    perf_warnings: list[str] = Field(default_factory=list)
    bpftrace_warnings: list[str] = Field(default_factory=list)
    py_spy: list[PySpyOutcome] = Field(default_factory=list)
    exited_pids: list[int] = Field(default_factory=list)
    targets: list[TargetSeen] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list, description="what to know, in words")
    jvm_perf_maps: dict[str, str] = Field(
        default_factory=dict, description="pid -> whether the JVM wrote its perf map"
    )
    symbols: list[dict[str, Any]] = Field(
        default_factory=list, description="per object: where its names came from"
    )
    leaf_callers_recovered: int = 0
    unresolved: Unresolved | None = None
    artifacts: list[str] = Field(default_factory=list)
    off_cpu_us: int | None = Field(default=None, description="off-cpu: time off CPU in all")
    sampling_weight: int | None = Field(
        default=None, description="off-cpu: one recorded switch weighs this many"
    )
    unwinding: list[UnwindChoice] = Field(default_factory=list)
    dwarf: DwarfStats | None = None
    attached: bool = Field(
        default=False, description="alloc/leak: every probe is in (recording from then)"
    )
    attached_at: float | None = None
    weights: list[str] = Field(
        default_factory=list, description="alloc/leak: the weights its outputs come in"
    )
    sampling: dict[str, Any] | None = Field(
        default=None, description="alloc/leak: the sampling, in numbers and in words"
    )
    memory: dict[str, Any] | None = Field(
        default=None,
        description="alloc/leak: allocations counted exactly and estimated from the samples, "
        "drops, lost stacks, per pid",
    )
    requested_from: float | None = Field(
        default=None, description="a kept flight-recorder interval: the asked start"
    )
    requested_to: float | None = None
    clipped: bool | None = Field(
        default=None, description="a kept interval: only part of the asked one was retained"
    )
    rss: list[RssTrendView] | None = Field(
        default=None,
        description="a kept interval: each recorded process's RSS trend over its seconds",
    )


class ProfileView(BaseModel):
    """A profile as the API shows it: state, progress, its result, links."""

    id: str
    state: State
    phase: Phase
    progress: float = Field(description="0..1: the recording's share of its duration, then 1")
    elapsed_s: float | None = Field(description="seconds recorded so far (or in all)")
    duration_s: float
    created_at: float
    started_at: float | None
    finished_at: float | None
    request: dict[str, Any] = Field(description="what was asked (POST /profiles' body)")
    message: str
    error: str | None
    metadata: ProfileResult
    links: dict[str, str] = Field(description="the profile and its outputs")
