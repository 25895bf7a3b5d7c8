"""What the memory-profile planner tests share: a glibc allocator and the planner's limits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from agent.profiling import alloc, memplan
from agent.profiling.planner import Limits, Plan, ProfileRequest, plan

GLIBC = alloc.Allocator(
    pid=7,
    flavor="glibc",
    path="/usr/lib/libc.so.6",
    host_path="/proc/7/root/usr/lib/libc.so.6",
    functions=("malloc", "free"),
    identity=(1, 2),
)
LIMITS = Limits(
    default_duration_s=10,
    max_duration_s=300,
    default_frequency_hz=99,
    max_frequency_hz=999,
    timeout_slack_s=30,
)


def wire_fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """A generic protobuf wire reader (field, wire type, value): no schema involved."""
    out: list[tuple[int, int, int | bytes]] = []
    i = 0

    def varint() -> int:
        nonlocal i
        shift = result = 0
        while True:
            b = buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return result

    while i < len(buf):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            out.append((field, wire, varint()))
        elif wire == 2:
            n = varint()
            out.append((field, wire, buf[i : i + n]))
            i += n
        else:
            raise AssertionError(f"unexpected wire type {wire}")
    return out


def memory_plan(
    req: ProfileRequest,
    facts: list[memplan.MemoryTargetFacts],
    *,
    limits: Limits = LIMITS,
    bpftrace_offsets: bool = False,
) -> Plan:
    """The planner's answer for a memory profile of ``facts`` (nothing read from /proc)."""
    return plan(
        req,
        targets=[],
        target="pod",
        limits=limits,
        output=Path("perf.data"),
        pid_ns=1,
        memory_targets=facts,
        bpftrace_offsets=bpftrace_offsets,
    )


def python_target(
    pid: int, *, directory: str | None = "/tmp", why: str = ""
) -> memplan.MemoryTargetFacts:
    """A CPython process on glibc, its Python frames reachable through ``directory``."""
    libc = dataclasses.replace(GLIBC, pid=pid, host_path=f"/proc/{pid}/root/usr/lib/libc.so.6")
    return memplan.MemoryTargetFacts(
        pid, "python3", "python", libc, python_dir=directory, python_why=why
    )
