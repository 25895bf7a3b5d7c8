"""tracecar agent: the HTTP service that runs in the injected sidecar.

It shares the pod's PID namespace (``shareProcessNamespace: true``) but not the
other containers' filesystems, listens on loopback only, and is reached through
``kubectl port-forward``.

Layout (enforced by import-linter, see pyproject.toml)::

    agent.app                  the FastAPI application and its lifespan
    agent.auth                 who may use it: the bearer token and where it comes from
    agent.routers.*            one APIRouter per concern; thin handlers
    agent.profiling            perf CPU profiles and their outputs
    agent.probes               uprobes through bpftrace or perf probe
    agent.lttng                LTTng sessions and their traces
    agent.jobs                 background jobs and their artifacts on disk
    agent.procfs               what /proc says about the pod's processes
    agent.capabilities         what works on this node, and why not
    agent.idle                 an idle (attached) agent ending itself
    agent._proc                the one seam to child processes
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
