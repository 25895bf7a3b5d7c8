"""Sinks: evidence that outlives the pod. Profiles to Grafana Pyroscope, artifacts to S3.

Public surface: :class:`Sinks` (constructed, started and flushed by :mod:`agent.app`;
the routers hand it profiles, triggers, artifacts and the recorder), :class:`Push`
(the ``"push"`` field the request bodies add), the answers' models (:class:`SinksStatus`
for ``/capabilities``, :class:`Upload`), and the label and profile-type names
(docs/stores.md). The private parts::

    _labels      the labels every profile carries, profile type ids, object keys
    _spool       the bounded on-disk spool of one sink (size and age limits, drops)
    _sink        one sink: spool + delivery task + state (backoff, error kinds)
    _pyroscope   Pyroscope's push API (Connect, protobuf by hand), auth from files
    _s3          S3-compatible stores through boto3 (AWS's credential chain)
    _continuous  the flight recorder's intervals -> one pprof per process group
    _service     Sinks: the sinks, publishing, uploads, continuous, the shutdown flush

Parca is not a sink yet: the only Parca the Go module proxy serves (v0.21.0) takes
profiles over gRPC(-Web) only, which needs a protobuf/gRPC stack the agent does not
carry; Pyroscope's push API is plain HTTP (docs/stores.md says more).
"""

from pydantic import BaseModel, Field

from agent.sinks._labels import METRIC_NAME, PROFILE_TYPE_ID, guess_workload
from agent.sinks._service import SINK_NAMES, Sinks, SinksStatus, Upload


class Push(BaseModel):
    """``"push": true`` on a request: send the result to the configured store too."""

    push: bool = Field(
        default=False,
        description="also send the profile(s) to the configured profile store (Pyroscope) "
        "and a copy to the object store when one is set; 409 when none is configured",
    )


__all__ = [
    "METRIC_NAME",
    "PROFILE_TYPE_ID",
    "SINK_NAMES",
    "Push",
    "Sinks",
    "SinksStatus",
    "Upload",
    "guess_workload",
]
