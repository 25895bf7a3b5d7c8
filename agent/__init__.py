"""tracecar agent: the HTTP service that runs in the injected sidecar.

It shares the pod's PID namespace (``shareProcessNamespace: true``) but not the
other containers' filesystems, listens on loopback only, and is reached through
``kubectl port-forward``.

Layout (enforced by import-linter, see pyproject.toml)::

    agent.__main__             the command: logging, the server, signals
    agent.boot                 the start-up: the port answers (and lttng-sessiond runs)
                               before the app is loaded behind it
    agent.app                  the FastAPI application, its lifespan, CAPABILITIES
    agent.registry             the one shape of a capability (start, stop, capabilities,
                               busy) and how the app builds them from CAPABILITIES
    agent.auth                 who may use it: the bearer token and where it comes from
    agent.deps                 FastAPI dependencies: the settings and the sinks
    agent.errors               the agent's errors, and the one table of tools' errors
    agent.openapi              what /openapi.json declares beyond the handlers' types
    agent.routers.*            one APIRouter per concern; thin handlers
    agent.profiling            perf CPU and off-CPU profiles, the flight recorder, triggers
    agent.probes               uprobes and USDT probes through bpftrace or perf probe
    agent.lttng                LTTng sessions and their traces
    agent.stacks               stack snapshots of one process (py-spy, jattach, gdb)
    agent.dotnet               .NET diagnostics: EventPipe traces, counters
    agent.dumps                dumps of one process (createdump, a JVM's .hprof, gcore)
    agent.memory               memory snapshots: smaps, a JVM's heap, CPython's allocator
    agent.sinks                where profiles and artifacts go to outlive the pod
    agent.symbolize            names for what perf cannot name (stripped Go, debug files)
    agent.symbols              a process's objects and their ELF symbols
    agent.jobs                 background jobs and their artifacts on disk
    agent.procfs               what /proc says about the pod's processes
    agent.capabilities         what works on this node, and why not
    agent.metrics              the Prometheus metrics of /metrics
    agent.idle                 an idle (attached) agent ending itself
    agent.settings             TRACECAR_AGENT_* settings, and the instance id
    agent._proc                the one seam to child processes

A new capability is one package and one line, as memory snapshots are. The package
``agent/memory/`` keeps its private parts and exports a service with the shape of
:class:`agent.registry.Capability`::

    class Service:
        async def start(self) -> None: ...      # after the job store loads
        async def stop(self) -> None: ...       # at shutdown: leave nothing behind
        async def capabilities(self) -> dict[str, object]: ...  # available, reason
        def busy(self) -> bool: ...             # work that keeps an idle agent alive

its router ``agent/routers/memory.py`` reads ``request.app.state.memory``, and
:data:`agent.app.CAPABILITIES` gets the line that builds it (with
``app.include_router`` for the router)::

    Registration("memory", lambda c: memory.Service()),

The app starts it, stops it, lists it in ``GET /capabilities`` and asks it whether the
agent is busy; a tool's failure in it is a 502 like everywhere (:mod:`agent.errors`).
"""

from functools import cache


@cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tracecar")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+unknown"


def __getattr__(name: str) -> str:
    # Looked up when first used (/healthz), not at import: `tracecar-agent healthcheck`,
    # the exec probe, imports this package and must stay light (importlib.metadata
    # scans every installed distribution).
    if name == "__version__":
        return _version()
    raise AttributeError(f"module 'agent' has no attribute {name!r}")
