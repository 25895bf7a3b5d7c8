"""What works on this node, and why not where it doesn't.

Each check is a small function returning a JSON-able dict (:class:`Check`: the
shape ``/capabilities`` documents for every entry); ``GET /capabilities`` gathers
them (:func:`general`). The capability modules (profiling, probes, lttng)
consult these before starting work so that a missing tool is a 503 pointing here,
not a crash. Slow checks (running a tool for its version, trying a BPF map) are
cached for :data:`CACHE_TTL_S`; reading /proc is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import platform
import re
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NotRequired

from pydantic import BaseModel, ConfigDict, Field, with_config
from typing_extensions import TypedDict  # pydantic's schemas need it before Python 3.12

from agent import _proc

CACHE_TTL_S = 60.0
TRACEFS = Path("/sys/kernel/tracing")

# Linux capability bit numbers (include/uapi/linux/capability.h) of the ones that
# matter to a tracer, plus the rest by name so the decoded set is complete.
_CAP_NAMES = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
    "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
    "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
    "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
    "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
]  # fmt: skip
TRACING_CAPS = ("SYS_ADMIN", "SYS_PTRACE", "PERFMON", "BPF", "DAC_READ_SEARCH", "IPC_LOCK")


@with_config(ConfigDict(extra="allow"))
class Check(TypedDict):
    """One entry of ``GET /capabilities`` (a tool, a kernel feature, a capability):
    whether it works here and, where it does not, why; each adds its own facts
    (versions, paths, limits, what it offers), hence ``additionalProperties``."""

    available: bool
    reason: NotRequired[str]
    version: NotRequired[str]
    path: NotRequired[str]


class Privileges(BaseModel):
    """The agent's effective Linux capabilities, and a boolean per capability a tracer
    needs (SYS_ADMIN, SYS_PTRACE, PERFMON, BPF, DAC_READ_SEARCH, IPC_LOCK)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, bool] = Field(init=False)
    effective: list[str]


class NodeFacts(BaseModel):
    """The node-wide part of ``GET /capabilities`` (:func:`general`)."""

    kernel: str = Field(description="the kernel's release")
    arch: str
    perf_event_paranoid: int | None = Field(description="null: unreadable")
    capabilities: Privileges
    perf_permitted: Check = Field(description="whether perf may record any process")
    tools: dict[str, Check] = Field(description="perf, bpftrace, lttng, babeltrace2")
    tracefs: Check
    bpf: Check
    kernel_tracing: Check = Field(description="LTTng's kernel domain (lttng-modules)")


# --- capabilities held ------------------------------------------------------------


def decode_caps(mask: int) -> list[str]:
    return [name for bit, name in enumerate(_CAP_NAMES) if mask >> bit & 1]


def effective_caps() -> set[str]:
    """The effective capability set of the agent (CapEff in /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return set(decode_caps(int(line.split()[1], 16)))
    return set()


def perf_event_paranoid() -> int | None:
    try:
        return int(Path("/proc/sys/kernel/perf_event_paranoid").read_text().strip())
    except (OSError, ValueError):
        return None


def perf_permitted() -> Check:
    """Can we ``perf record -p`` any process? (CAP_PERFMON/SYS_ADMIN, or paranoid -1)."""
    caps = effective_caps()
    paranoid = perf_event_paranoid()
    if caps & {"PERFMON", "SYS_ADMIN"}:
        return {"available": True, "reason": "CAP_PERFMON or CAP_SYS_ADMIN held"}
    if paranoid is not None and paranoid <= -1:
        return {"available": True, "reason": "kernel.perf_event_paranoid is -1"}
    return {
        "available": False,
        "reason": f"kernel.perf_event_paranoid is {paranoid} and neither CAP_PERFMON nor "
        "CAP_SYS_ADMIN is held: run the agent privileged or add those capabilities",
    }


# --- cached slow checks --------------------------------------------------------------

_cache: dict[str, tuple[float, Any]] = {}
# One lock per check and event loop: an asyncio.Lock belongs to the loop that first
# waited on it, and each app (each test client) runs its own loop.
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


async def _cached(key: str, compute: Callable[[], Awaitable[Any]]) -> Any:
    hit = _cache.get(key)
    if hit is not None and time.monotonic() - hit[0] < CACHE_TTL_S:
        return hit[1]
    locks = _locks.setdefault(asyncio.get_running_loop(), {})
    lock = locks.setdefault(key, asyncio.Lock())
    async with lock:
        hit = _cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < CACHE_TTL_S:
            return hit[1]
        value = await compute()
        _cache[key] = (time.monotonic(), value)
        return value


def clear_cache() -> None:
    _cache.clear()


_VERSION = re.compile(r"\d+\.\d+(?:\.\d+)?")


async def tool_version(tool: str, *args: str, path: str | None = None) -> Check:
    """Is ``tool`` installed, and which version (from its own ``--version``-style output).

    ``path``: where the caller found it (py-spy beside the agent's Python), else PATH."""

    async def compute() -> Check:
        found = path or _proc.which(tool)
        if found is None:
            return {"available": False, "reason": f"{tool} is not installed (not on PATH)"}
        try:
            done = await _proc.run([found, *args], timeout=10, check=False)
        except _proc.ProcError as e:
            return {"available": False, "reason": str(e), "path": found}
        m = _VERSION.search(done.text + done.err)
        if m is None:
            return {"available": False, "path": found, "reason": f"{tool} did not print a version"}
        return {"available": True, "version": m.group(0), "path": found}

    result: Check = await _cached(f"version:{tool}:{path}", compute)
    return result


async def bpftrace_offsets() -> bool:
    """Can bpftrace place a uprobe at an offset into a function (``uprobe:LIB:free+3``)?

    Only a bpftrace built with binutils' disassembler, which checks that the offset is an
    instruction boundary, can: ``bfd: yes`` in ``bpftrace --info``. Debian's own build
    says no; scripts/images.d/bpftrace builds one that says yes (the image's, and the one
    scripts/setup installs)."""

    async def compute() -> bool:
        found = _proc.which("bpftrace")
        if found is None:
            return False
        try:
            done = await _proc.run([found, "--info"], timeout=30, check=False)
        except _proc.ProcError:
            return False
        lines = (done.text + done.err).splitlines()
        return any(line.split() == ["bfd:", "yes"] for line in lines)

    return bool(await _cached("bpftrace-offsets", compute))


async def perf() -> Check:
    return await tool_version("perf", "version")


# --- tracefs -------------------------------------------------------------------------


def tracefs_mounted() -> bool:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "tracefs":
                return True
    return False


async def ensure_tracefs() -> Check:
    """Mount tracefs at /sys/kernel/tracing if it is not mounted and we are allowed to."""
    if tracefs_mounted():
        return {"available": True, "path": str(TRACEFS), "reason": "mounted"}
    if "SYS_ADMIN" not in effective_caps():
        return {
            "available": False,
            "reason": "tracefs is not mounted and mounting it needs CAP_SYS_ADMIN",
        }
    try:
        await _proc.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], timeout=10)
    except _proc.ProcError as e:
        return {"available": False, "reason": f"tracefs is not mounted and mounting failed: {e}"}
    return {"available": True, "path": str(TRACEFS), "reason": "mounted by the agent"}


# --- BPF -----------------------------------------------------------------------------

_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_BPF_MAP_CREATE = 0
_BPF_MAP_TYPE_ARRAY = 2


def bpf_usable() -> Check:
    """Try what bpftrace needs first: create (and close) a one-entry BPF array map."""
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        return {"available": False, "reason": f"unknown bpf syscall on {platform.machine()}"}
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 32)()  # union bpf_attr, zeroed; MAP_CREATE uses the first 4
    attr[0], attr[1], attr[2], attr[3] = _BPF_MAP_TYPE_ARRAY, 4, 4, 1
    fd = libc.syscall(nr, _BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        return {"available": False, "reason": f"bpf(BPF_MAP_CREATE) failed: {os.strerror(err)}"}
    os.close(fd)
    return {"available": True, "reason": "bpf(BPF_MAP_CREATE) works"}


# --- LTTng kernel tracing -------------------------------------------------------------


def lttng_kernel() -> Check:
    """LTTng's kernel domain needs its kernel modules (lttng-modules), loaded or loadable."""
    if Path("/sys/module/lttng_tracer").exists():
        return {"available": True, "reason": "lttng-modules are loaded"}
    release = platform.release()
    mod_dir = Path("/lib/modules") / release
    if not Path("/proc/modules").exists():
        return {
            "available": False,
            "reason": "this kernel has no loadable-module support, so lttng-modules "
            "cannot be loaded; LTTng user-space tracing is unaffected",
        }
    with contextlib.suppress(OSError):
        if any(mod_dir.rglob("lttng-tracer.ko*")):
            return {"available": True, "reason": "lttng-modules are installed (loadable)"}
    return {
        "available": False,
        "reason": f"lttng-modules are not installed for kernel {release}; "
        "LTTng user-space tracing is unaffected",
    }


# --- everything ------------------------------------------------------------------------


async def general() -> NodeFacts:
    """The node-wide facts of ``GET /capabilities`` (the services add their own)."""
    caps = effective_caps()
    perf_check, bpftrace, lttng, babeltrace2, tracefs = await asyncio.gather(
        perf(),
        tool_version("bpftrace", "--version"),
        tool_version("lttng", "--version"),
        tool_version("babeltrace2", "--version"),
        _cached("tracefs", ensure_tracefs),
    )
    bpf = await _cached("bpf", lambda: asyncio.to_thread(bpf_usable))
    return NodeFacts(
        kernel=platform.release(),
        arch=platform.machine(),
        perf_event_paranoid=perf_event_paranoid(),
        capabilities=Privileges(
            effective=sorted(caps), **{name: name in caps for name in TRACING_CAPS}
        ),
        perf_permitted=perf_permitted(),
        tools={
            "perf": perf_check,
            "bpftrace": bpftrace,
            "lttng": lttng,
            "babeltrace2": babeltrace2,
        },
        tracefs=tracefs,
        bpf=bpf,
        kernel_tracing=lttng_kernel(),
    )
