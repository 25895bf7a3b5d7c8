"""LTTng tracing sessions on the pod's instrumented apps, and their traces.

Public surface: :class:`Service` (constructed by :mod:`agent.app` with the
settings and the shared :class:`agent.jobs.JobStore`; started and stopped by
the app's lifespan) and the request models re-exported from ``_model``.

Inside, one module per concern::

    _model     the request models and the wire shapes (pydantic, TypedDicts)
    _plan      a request -> the lttng command lines (pure; what dry_run shows)
    _cli       the lttng command line client: run, list, detail, parse errors
    _daemon    the pod's root lttng-sessiond: start or adopt it, health checks
    _session   one session's record (Session) and the size of its files
    _read      traces -> babeltrace2 text or NDJSON, counts, tar.gz archives
    _native    the native NDJSON sink for babeltrace2 (built or prebuilt)
    _service   Service: the registry, limits, watchdog, actions and reads

The service owns:

* the pod's root session daemon (:mod:`._daemon`);
* a registry of *our* sessions. Each is named ``tracecar-<instance>-<id>`` in
  the daemon, so the agent never touches anyone else's sessions and can sweep
  its own leftovers at start-up; its files live in ``DATA_DIR/lttng/<id>/``;
* the bounds: a maximum number of sessions, a size cap per session (a watchdog
  stops recording when the trace outgrows it), and a maximum lifetime after
  which the session is destroyed and its files removed. Shutdown destroys all
  of our sessions and removes their files.

Sessions are not :class:`agent.jobs.JobStore` jobs: their life (created,
active, stopped, restarted) is not a job's one-way state machine. The store is
still handed in (the capability contract) and its start-up sweep removes any
``DATA_DIR/lttng`` leftovers (they have no ``job.json``).
"""

from agent.lttng._model import EventSpec, Format, SessionRequest
from agent.lttng._service import Service

__all__ = ["EventSpec", "Format", "Service", "SessionRequest"]
