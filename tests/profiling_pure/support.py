"""What the memory-profile planner tests share: a glibc allocator and the planner's limits."""

from __future__ import annotations

from agent.profiling import alloc
from agent.profiling.planner import Limits

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
