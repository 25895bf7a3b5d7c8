"""Dumps of one process (createdump for .NET, the JVM's .hprof heap dump through
jattach, gdb's gcore for the rest): the public surface the app and routers use (see
``_service``)."""

from agent.dumps._service import (
    CORE,
    FILES,
    HPROF,
    KIND,
    DumpFormat,
    DumpJob,
    DumpRequest,
    DumpResult,
    DumpType,
    Estimate,
    Service,
    format_of,
    link,
)

__all__ = [
    "CORE",
    "FILES",
    "HPROF",
    "KIND",
    "DumpFormat",
    "DumpJob",
    "DumpRequest",
    "DumpResult",
    "DumpType",
    "Estimate",
    "Service",
    "format_of",
    "link",
]
