"""The one shape of a capability, and how the app builds, starts and stops them.

A capability (CPU profiles, probes, LTTng sessions, .NET traces, core dumps, stack
snapshots...) is a package under ``agent/`` whose public surface offers a service
object with four members, the :class:`Capability` protocol:

* ``start()``: after the job store has loaded; sweep leftovers, start watchdogs;
* ``stop()``: at shutdown, after the job store asked running jobs to stop; end what
  is still running and leave nothing behind (tracers reaped, sessions destroyed);
* ``capabilities()``: its entry in ``GET /capabilities`` (``available`` and
  ``reason`` at least: what works here, and why not);
* ``busy()``: whether it holds work that keeps an idle (attached) agent alive.

:data:`agent.app.CAPABILITIES` lists a :class:`Registration` per capability: its
name (the ``app.state`` attribute its router reads, and its key in
``/capabilities``) and how to build it from the :class:`Context`. The app walks
that list and nothing else: building, starting in order, stopping in reverse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, runtime_checkable

from agent.jobs import JobStore
from agent.metrics import Metrics
from agent.settings import Settings

T = TypeVar("T")


@runtime_checkable
class Capability(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def capabilities(self) -> dict[str, object]: ...

    def busy(self) -> bool: ...


@dataclass
class Context:
    """What a capability is built from: the settings, the shared job store and metrics,
    and the capabilities built before it (registration order), by name."""

    settings: Settings
    jobs: JobStore
    metrics: Metrics
    built: dict[str, Capability] = field(default_factory=dict)
    prestarted: dict[str, object] = field(default_factory=dict)
    """What the boot started before the app was loaded, by capability name (the LTTng
    session daemon: :mod:`agent.boot`), for that capability to adopt."""

    def get(self, name: str, kind: type[T]) -> T:
        """A capability registered earlier, as its own type (the triggers need the
        profiling service)."""
        svc = self.built.get(name)
        if not isinstance(svc, kind):
            raise LookupError(f"capability {name!r} is not registered before its user")
        return svc

    def prestarted_as(self, name: str, kind: type[T]) -> T | None:
        """What the boot started for capability ``name``, as its own type, if anything."""
        part = self.prestarted.get(name)
        if part is None:
            return None
        if not isinstance(part, kind):
            raise TypeError(f"prestarted {name!r} is a {type(part).__name__}, not {kind.__name__}")
        return part


@dataclass(frozen=True)
class Registration:
    name: str
    """The ``app.state`` attribute and the key in ``GET /capabilities``."""
    build: Callable[[Context], Capability]


def build_all(registrations: tuple[Registration, ...], ctx: Context) -> dict[str, Capability]:
    """Each registration built in order (a later one may use an earlier one)."""
    for reg in registrations:
        if reg.name in ctx.built:
            raise ValueError(f"capability {reg.name!r} is registered twice")
        ctx.built[reg.name] = reg.build(ctx)
    return dict(ctx.built)
