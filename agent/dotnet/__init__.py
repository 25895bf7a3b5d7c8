""".NET (CoreCLR) diagnostics: the runtime's diagnostics port (EventPipe traces as
.nettrace files, System.Runtime counters, its own answers) and the nettrace format.

The public surface the app and routers use; the parts are private modules:
``_ipc`` (the socket protocol), ``_nettrace`` (the stream format), ``_model``
(wire formats, presets, event names), ``_service`` (jobs and errors).
"""

from agent.dotnet._model import (
    Counters,
    Preset,
    ProcessInfoAnswer,
    ProviderSpec,
    ProviderUsed,
    TraceRequest,
    TraceResult,
    TraceSummary,
)
from agent.dotnet._service import KIND, TRACE_FILE, Service, TraceJob, require_dotnet

__all__ = [
    "KIND",
    "TRACE_FILE",
    "Counters",
    "Preset",
    "ProcessInfoAnswer",
    "ProviderSpec",
    "ProviderUsed",
    "Service",
    "TraceJob",
    "TraceRequest",
    "TraceResult",
    "TraceSummary",
    "require_dotnet",
]
