"""Memory snapshots of one process: the kernel's figures (smaps), and the runtime's
own (the JVM's heap and class histogram through jattach, CPython's allocator read by
gdb). The public surface the app, the routers and agent.dumps use; the parts are
private: ``_parse`` (pure readers), ``_gdbscript`` (the gdb-Python reader),
``_model`` (wire formats), ``_service`` (running the tools, the errors)."""

from agent.memory._model import (
    ClassHistogram,
    HistogramEntry,
    JavaHeap,
    MemorySnapshot,
    PythonAllocator,
    RuntimeMemory,
)
from agent.memory._service import MAX_TOP, Service, attach_disabled, java_tmp

__all__ = [
    "MAX_TOP",
    "ClassHistogram",
    "HistogramEntry",
    "JavaHeap",
    "MemorySnapshot",
    "PythonAllocator",
    "RuntimeMemory",
    "Service",
    "attach_disabled",
    "java_tmp",
]
