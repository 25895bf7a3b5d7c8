"""What the planner needs to know about each target process, read from /proc.

:func:`traceable` refuses (409) a process perf cannot attach to; :func:`target_facts`
gathers a target's runtime, perf map, symbols and frame pointers for the planner.
"""

from __future__ import annotations

from agent import procfs
from agent.errors import Conflict
from agent.profiling.planner import TargetFacts

_FLAGGED = ("java", "node", "python", "dotnet")


def traceable(info: procfs.ProcessInfo) -> procfs.ProcessInfo:
    """A process perf can attach to, or 409 saying why not (perf would fail mutely).

    Zombies also show no namespaces; they go to perf, whose own refusal says it all.
    """
    if info.mnt_ns == 0 and info.state != "Z":
        raise Conflict(
            f"pid {info.pid} ({info.comm}) is closed to the agent: its /proc namespaces "
            "cannot be read, so perf cannot attach (see GET /capabilities)"
        )
    return info


def target_facts(info: procfs.ProcessInfo) -> TargetFacts:
    elf = procfs.elf_facts(info.pid) if info.exe else None
    return TargetFacts(
        pid=info.pid,
        comm=info.comm,
        container=info.container,
        runtime=info.runtime,
        runtime_version=info.runtime_version,
        perf_map=info.perf_map,
        exe=info.exe,
        stripped=elf is not None and not elf.symtab and not elf.debug_info,
        # Only native code is judged by its prologues: runtimes have their own story.
        frame_pointers=procfs.frame_pointers(info.pid) if info.runtime == "native" else None,
        runtime_flags=procfs.runtime_flags(info.pid) if info.runtime in _FLAGGED else (),
    )
