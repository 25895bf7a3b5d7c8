"""Core dumps of one process (createdump for .NET, gdb's gcore for the rest): the
public surface the app and routers use (see ``_service``)."""

from agent.dumps._service import CORE, KIND, DumpRequest, DumpType, Estimate, Service

__all__ = ["CORE", "KIND", "DumpRequest", "DumpType", "Estimate", "Service"]
