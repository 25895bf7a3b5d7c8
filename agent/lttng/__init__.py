"""LTTng tracing sessions on the pod's instrumented apps, and their traces.

Public surface: :class:`Service` (constructed by :mod:`agent.app` with the
settings and the shared :class:`agent.jobs.JobStore`; started and stopped by
the app's lifespan), the request and answer models re-exported from ``_model``, and
:func:`build_daemon` / :class:`SessionDaemon`: the boot (:mod:`agent.boot`) starts
the pod's session daemon before the app is loaded and hands it to the service.

Inside, one module per concern::

    _model     the request models and the wire shapes (pydantic, TypedDicts)
    _plan      a request -> the lttng command lines (pure; what dry_run shows)
    _cli       the lttng command line client: run, list, detail, parse errors
    _daemon    the pod's root lttng-sessiond: start or adopt it, health checks
    _session   one session's record (Session) and the size of its files
    _read      traces -> babeltrace2 text or NDJSON, counts, tar.gz archives
    _native    the native NDJSON sink for babeltrace2 (built or prebuilt)
    _service   Service: the registry, limits, watchdog, actions and reads

A session is ours alone (named ``tracecar-<instance>-<id>`` in the daemon, its
files in ``DATA_DIR/lttng/<id>/``), bounded (count, size, lifetime) and gone with
the agent; :mod:`._service` says how. Sessions are not job-store jobs: their life
(created, active, stopped, restarted) is not a job's one-way state machine.
"""

from agent.lttng._daemon import SessionDaemon
from agent.lttng._model import (
    Action,
    Deleted,
    EventSpec,
    Format,
    SessionList,
    SessionPlan,
    SessionRequest,
    SessionView,
    Tracepoints,
)
from agent.lttng._service import Service, build_daemon

__all__ = [
    "Action",
    "Deleted",
    "EventSpec",
    "Format",
    "Service",
    "SessionDaemon",
    "SessionList",
    "SessionPlan",
    "SessionRequest",
    "SessionView",
    "Tracepoints",
    "build_daemon",
]
