"""Wire formats of the .NET endpoints, the EventPipe presets and providers, and the
names of the runtime's own events.

This module owns what a request may ask for (validated before anything reaches
the runtime) and the vocabulary of the answers. It is pure.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from agent.errors import Invalid
from agent.jobs import Later, later

RUNTIME = "Microsoft-Windows-DotNETRuntime"
RUNTIME_PRIVATE = "Microsoft-Windows-DotNETRuntimePrivate"
RUNDOWN = "Microsoft-Windows-DotNETRuntimeRundown"
SAMPLE_PROFILER = "Microsoft-DotNETCore-SampleProfiler"
SYSTEM_RUNTIME = "System.Runtime"

# The runtime provider's keywords (ClrEtwAll.man), by the names dotnet-trace uses.
KEYWORDS: dict[str, int] = {
    "gc": 0x1,
    "gchandle": 0x2,
    "loader": 0x8,
    "jit": 0x10,
    "ngen": 0x20,
    "startenumeration": 0x40,
    "endenumeration": 0x80,
    "security": 0x400,
    "appdomainresourcemanagement": 0x800,
    "jittracing": 0x1000,
    "interop": 0x2000,
    "contention": 0x4000,
    "exception": 0x8000,
    "threading": 0x10000,
    "jittedmethodiltonativemap": 0x20000,
    "overrideandsuppressngenevents": 0x40000,
    "type": 0x80000,
    "gcheapdump": 0x100000,
    "gcsampledobjectallocationhigh": 0x200000,
    "gcheapsurvivalandmovement": 0x400000,
    "gcheapcollect": 0x800000,
    "gcheapandtypenames": 0x1000000,
    "gcsampledobjectallocationlow": 0x2000000,
    "perftrack": 0x20000000,
    "stack": 0x40000000,
    "threadtransfer": 0x80000000,
    "debugger": 0x100000000,
}

LEVELS = {"logalways": 0, "critical": 1, "error": 2, "warning": 3, "informational": 4, "verbose": 5}

# Providers the runtime and the base class library define (plus the app's own
# EventSources, which need "custom": true: a typo then fails here, not silently).
KNOWN_PROVIDERS = frozenset(
    {
        RUNTIME,
        RUNTIME_PRIVATE,
        RUNDOWN,
        SAMPLE_PROFILER,
        SYSTEM_RUNTIME,
        "Microsoft-DotNETCore-EventPipe",
        "Microsoft-Diagnostics-DiagnosticSource",
        "Microsoft-Extensions-Logging",
        "Microsoft-AspNetCore-Hosting",
        "Microsoft-AspNetCore-Server-Kestrel",
        "Microsoft.AspNetCore.Http.Connections",
        "System.Net.Http",
        "System.Net.Sockets",
        "System.Net.NameResolution",
        "System.Net.Security",
        "System.Threading.Tasks.TplEventSource",
        "System.Buffers.ArrayPoolEventSource",
        "System.Collections.Concurrent.ConcurrentCollectionsEventSource",
        "System.Diagnostics.Eventing.FrameworkEventSource",
        "Private.InternalDiagnostics.System.Net.Http",
    }
)

Preset = Literal["cpu-sampling", "gc", "exceptions"]


class ProviderSpec(BaseModel):
    """One EventPipe provider of a session."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9._-]{0,127}$")]
    keywords: (
        int | Annotated[str, StringConstraints(pattern=r"^(0x[0-9a-fA-F]{1,16}|[a-z,]+)$")]
    ) = Field(
        default=0xFFFFFFFFFFFFFFFF,
        description="a number, hex 0x..., or names of the runtime provider's keywords "
        "joined by commas (gc,exception,jit...)",
    )
    level: (
        int | Literal["logalways", "critical", "error", "warning", "informational", "verbose"]
    ) = Field(default=4, description="0-5 or its name (4: informational)")
    filter: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.=;:,\- ]{0,256}$")] = Field(
        default="", description="the provider's filter data, e.g. EventCounterIntervalSec=1"
    )
    custom: bool = Field(
        default=False, description="the app's own EventSource: a name tracecar does not know"
    )


class TraceRequest(BaseModel):
    """``POST /dotnet/{pid}/traces``: an EventPipe session saved as a .nettrace file."""

    model_config = ConfigDict(extra="forbid")

    duration_s: float = Field(default=10, gt=0, le=600)
    preset: Preset | None = Field(
        default=None,
        description="cpu-sampling (stacks every ms + JIT names), gc (collections, "
        "allocation ticks), exceptions (first-chance exceptions); added to providers",
    )
    providers: list[ProviderSpec] = Field(default_factory=list, max_length=32)
    buffer_mb: int = Field(default=256, ge=1, le=1024, description="the runtime's buffer")
    rundown: bool = Field(
        default=True,
        description="method names at the end (what stacks need); false needs .NET 5",
    )


def preset_providers(preset: Preset) -> list[ProviderSpec]:
    """The providers of a preset (dotnet-trace's profiles of the same name)."""
    if preset == "cpu-sampling":
        return [
            ProviderSpec(name=SAMPLE_PROFILER, keywords=0, level=5),
            ProviderSpec(name=RUNTIME, keywords=0x14C14FCCBD, level=4),
        ]
    if preset == "gc":
        return [ProviderSpec(name=RUNTIME, keywords=KEYWORDS["gc"], level=5)]
    return [ProviderSpec(name=RUNTIME, keywords=KEYWORDS["exception"], level=4)]


def resolve(spec: ProviderSpec, index: int) -> tuple[str, int, int, str]:
    """(name, keywords, level, filter) of one provider, or a 422 saying what is allowed."""
    where = f"providers.{index}"
    if spec.name not in KNOWN_PROVIDERS and not spec.custom:
        raise Invalid(
            f"{where}.name: unknown provider {spec.name!r}; use a preset "
            "(cpu-sampling, gc, exceptions), a known provider ("
            + ", ".join(sorted(KNOWN_PROVIDERS))
            + '), or "custom": true for the app\'s own EventSource',
            field=f"{where}.name",
            allowed={"presets": ["cpu-sampling", "gc", "exceptions"]},
        )
    kw = spec.keywords
    if isinstance(kw, str):
        if kw.startswith("0x"):
            kw = int(kw, 16)
        else:
            unknown = [k for k in kw.split(",") if k not in KEYWORDS]
            if unknown:
                raise Invalid(
                    f"{where}.keywords: unknown keyword(s) {', '.join(unknown)}; known: "
                    + ", ".join(KEYWORDS),
                    field=f"{where}.keywords",
                )
            kw = 0
            for k in spec.keywords.split(",") if isinstance(spec.keywords, str) else ():
                kw |= KEYWORDS[k]
    if not 0 <= kw < 1 << 64:
        raise Invalid(f"{where}.keywords must fit in 64 bits", field=f"{where}.keywords")
    level = LEVELS[spec.level] if isinstance(spec.level, str) else spec.level
    if not 0 <= level <= 5:
        raise Invalid(f"{where}.level must be 0-5 (5: verbose)", field=f"{where}.level")
    return spec.name, kw, level, spec.filter


class ProviderUsed(BaseModel):
    """A provider as the session asked the runtime for it (duplicates merged)."""

    name: str
    keywords: str = Field(description="the keyword mask, in hex (0x...)")
    level: int = Field(description="0 (log always) to 5 (verbose)")
    filter: str = Field(description="the provider's filter arguments (empty: none)")


class TraceResult(BaseModel):
    """A trace job's result (``Job[TraceResult]``), filled as it runs: each field shows
    once known (the session at the start; the counts when it ends)."""

    session_id: Later[int] = later("the EventPipe session's id (the runtime's)")
    providers: Later[list[ProviderUsed]] = later("what the session enabled")
    cut: Later[str] = later("the stream passed the size limit: cut there (still readable)")
    stop_error: Later[str] = later("StopTracing failed (the stream ended by itself then)")
    bytes: Later[int] = later("the .nettrace's size")
    recorded_s: Later[float] = later("seconds from the start to the end of the stream")
    parse_error: Later[str] = later("the agent's reader could not read the stream (no summary)")
    events: Later[int] = later("events in the stream (the summary has them by name)")
    complete: Later[bool] = later("the stream's end marker was read")


class EventCount(BaseModel):
    provider: str
    event: str
    count: int


class TraceSummary(BaseModel):
    """What the .nettrace holds, parsed by the agent."""

    bytes: int
    complete: bool = Field(description="the stream's end marker was read")
    events: int
    event_types: int
    stacks: int
    pid: int
    by_event: list[EventCount] = Field(description="events per provider and name, most first")


class CounterValue(BaseModel):
    name: str
    display_name: str
    units: str
    type: Literal["Mean", "Sum", "other"]
    value: float = Field(description="the last interval's mean (Mean) or increment (Sum)")
    samples: list[float]


class Counters(BaseModel):
    """``GET /dotnet/{pid}/counters``: System.Runtime's EventCounters over the window."""

    pid: int
    runtime_version: str | None
    duration_s: float
    interval_s: int
    counters: dict[str, CounterValue]


class ProcessInfoAnswer(BaseModel):
    """ProcessInfo, from the runtime itself (.NET 5+)."""

    pid: int
    runtime_cookie: str
    command_line: str
    os: str
    arch: str


# Runtime event ids -> names (ClrEtwAll.man): the runtime's own events carry no name
# in their EventPipe metadata before .NET 5, only the provider and the id.
RUNTIME_EVENTS: dict[int, str] = {
    1: "GCStart",
    2: "GCEnd",
    3: "GCRestartEEEnd",
    4: "GCHeapStats",
    5: "GCCreateSegment",
    6: "GCFreeSegment",
    7: "GCRestartEEBegin",
    8: "GCSuspendEEEnd",
    9: "GCSuspendEEBegin",
    10: "GCAllocationTick",
    11: "GCCreateConcurrentThread",
    12: "GCTerminateConcurrentThread",
    13: "GCFinalizersEnd",
    14: "GCFinalizersBegin",
    15: "BulkType",
    16: "GCBulkRootEdge",
    17: "GCBulkRootConditionalWeakTableElementEdge",
    18: "GCBulkNode",
    19: "GCBulkEdge",
    20: "GCSampledObjectAllocationHigh",
    21: "GCBulkSurvivingObjectRanges",
    22: "GCBulkMovedObjectRanges",
    23: "GCGenerationRange",
    25: "GCMarkStackRoots",
    26: "GCMarkFinalizeQueueRoots",
    27: "GCMarkHandles",
    28: "GCMarkOlderGenerationRoots",
    29: "FinalizeObject",
    30: "SetGCHandle",
    31: "DestroyGCHandle",
    32: "GCSampledObjectAllocationLow",
    33: "PinObjectAtGCTime",
    35: "GCTriggered",
    36: "GCBulkRootCCW",
    37: "GCBulkRCW",
    38: "GCBulkRootStaticVar",
    39: "GCDynamicEvent",
    40: "WorkerThreadCreate",
    50: "ThreadPoolWorkerThreadStart",
    51: "ThreadPoolWorkerThreadStop",
    52: "ThreadPoolWorkerThreadRetirementStart",
    53: "ThreadPoolWorkerThreadRetirementStop",
    54: "ThreadPoolWorkerThreadAdjustmentSample",
    55: "ThreadPoolWorkerThreadAdjustmentAdjustment",
    56: "ThreadPoolWorkerThreadAdjustmentStats",
    57: "ThreadPoolWorkerThreadWait",
    60: "ThreadPoolWorkingThreadCount",
    61: "ThreadPoolEnqueue",
    62: "ThreadPoolDequeue",
    63: "ThreadPoolIOEnqueue",
    64: "ThreadPoolIODequeue",
    65: "ThreadPoolIOPack",
    70: "ThreadCreating",
    71: "ThreadRunning",
    80: "ExceptionThrown",
    81: "ContentionStart",
    82: "CLRStackWalk",
    83: "AppDomainMemAllocated",
    84: "AppDomainMemSurvived",
    85: "ThreadCreated",
    86: "ThreadTerminated",
    87: "ThreadDomainEnter",
    88: "ILStubGenerated",
    89: "ILStubCacheHit",
    91: "ContentionStop",
    135: "DCStartCompleteV2",
    136: "DCEndCompleteV2",
    137: "MethodDCStartV2",
    138: "MethodDCEndV2",
    139: "MethodDCStartVerboseV2",
    140: "MethodDCEndVerboseV2",
    141: "MethodLoad",
    142: "MethodUnload",
    143: "MethodLoadVerbose",
    144: "MethodUnloadVerbose",
    145: "MethodJittingStarted",
    146: "MethodJitMemoryAllocatedForCode",
    151: "DomainModuleLoad",
    152: "ModuleLoad",
    153: "ModuleUnload",
    154: "AssemblyLoad",
    155: "AssemblyUnload",
    156: "AppDomainLoad",
    157: "AppDomainUnload",
    158: "ModuleRangeLoad",
    160: "StrongNameVerificationStart",
    185: "MethodJitInliningSucceeded",
    186: "MethodJitInliningFailed",
    187: "RuntimeInformationStart",
    188: "MethodJitTailCallSucceeded",
    189: "MethodJitTailCallFailed",
    190: "MethodILToNativeMap",
    200: "IncreaseMemoryPressure",
    201: "DecreaseMemoryPressure",
    202: "GCMarkWithType",
    203: "GCJoin",
    204: "GCPerHeapHistory",
    205: "GCGlobalHeapHistory",
    250: "ExceptionCatchStart",
    251: "ExceptionCatchStop",
    252: "ExceptionFinallyStart",
    253: "ExceptionFinallyStop",
    254: "ExceptionFilterStart",
    255: "ExceptionFilterStop",
    256: "ExceptionThrownStop",
    290: "DebugIPCEventStart",
    291: "DebugIPCEventEnd",
    292: "DebugExceptionProcessingStart",
    293: "DebugExceptionProcessingEnd",
}
# The rundown provider reuses some ids with names of its own (ClrEtwAll.man).
RUNDOWN_EVENTS: dict[int, str] = {
    10: "RuntimeInformationDCStart",
    141: "MethodDCStart",
    142: "MethodDCEnd",
    143: "MethodDCStartVerbose",
    144: "MethodDCEndVerbose",
    145: "DCStartComplete",
    146: "DCEndComplete",
    147: "DCStartInit",
    148: "DCEndInit",
    149: "MethodDCStartILToNativeMap",
    150: "MethodDCEndILToNativeMap",
    151: "DomainModuleDCStart",
    152: "DomainModuleDCEnd",
    153: "ModuleDCStart",
    154: "ModuleDCEnd",
    155: "AssemblyDCStart",
    156: "AssemblyDCEnd",
    157: "AppDomainDCStart",
    158: "AppDomainDCEnd",
    159: "ThreadDCEnd",
    160: "ModuleRangeDCStart",
    161: "ModuleRangeDCEnd",
    187: "RuntimeInformationDCStart",
}


def event_name(provider: str, event_id: int, name: str, version: int = 0) -> str:
    """The event's name: its metadata's, else the runtime's manifest's with its version
    as LTTng names it (``ExceptionThrown_V1``), else ``Event<ID>``."""
    if name:
        return name
    table = RUNDOWN_EVENTS if provider == RUNDOWN else RUNTIME_EVENTS
    if provider in (RUNTIME, RUNDOWN) and event_id in table:
        known = table[event_id]
        return f"{known}_V{version}" if version and not known.endswith("V2") else known
    return f"Event{event_id}"
