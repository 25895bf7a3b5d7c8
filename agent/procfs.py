"""What /proc says about the pod's processes.

Owned here: reading /proc (the process list, one process's details, its mount
namespace and container, its runtime) and resolving paths *as a process sees
them* through ``/proc/PID/root``, refusing any path that escapes that root.
Everything here is synchronous and cheap; callers run it in a thread if they
must walk every process.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.errors import AgentError, Invalid, NotFound

PROC = Path("/proc")


def pid_exists(pid: int) -> bool:
    return pid > 0 and (PROC / str(pid)).is_dir()


_PF_EXITING = 0x4
"""The kernel's task flag set as ``do_exit`` begins (include/linux/sched.h)."""


def running(pid: int) -> bool:
    """``pid`` exists and has not exited: a zombie (exited, not yet reaped by its parent)
    still has a /proc entry, and a profile must count it as exited, not as running. So
    must a process on its way out: the kernel tears its memory down (py-spy and perf see
    it gone) well before it is a zombie, and on a busy machine the agent asks in between;
    the exit flag is set first, so it answers the same then."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    # "PID (comm) STATE PPID PGRP SESSION TTY TPGID FLAGS ...": comm may hold spaces and
    # parentheses; the fields follow the last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X", "x"):
        return False
    try:
        return not int(fields[6]) & _PF_EXITING
    except (IndexError, ValueError):
        return True


def require_pid(pid: int) -> int:
    """Raise 404 unless ``pid`` is a live process in our PID namespace."""
    if not pid_exists(pid):
        raise NotFound(f"no process with pid {pid} in this pod (see GET /processes)")
    return pid


def proc_root(pid: int) -> Path:
    """The root directory as ``pid`` sees it (its container's filesystem)."""
    return PROC / str(require_pid(pid)) / "root"


def resolve_in_root(pid: int, path: str) -> Path:
    """``path`` as process ``pid`` sees it, reached through ``/proc/PID/root``.

    Symlinks are resolved *inside* that root (an absolute link target is taken
    relative to it), and a result outside it is refused with 422.
    """
    if not path.startswith("/"):
        raise Invalid(f"path {path!r} must be absolute (as the process sees it)", field="binary")
    root = proc_root(pid)
    current = "/"
    parts = [p for p in path.split("/") if p]
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            current = os.path.dirname(current.rstrip("/")) or "/"
            continue
        candidate = os.path.join(current, part)
        host = Path(str(root) + candidate)
        if host.is_symlink():
            hops += 1
            if hops > 40:
                raise Invalid(f"too many symlinks resolving {path!r}", field="binary")
            target = os.readlink(host)
            if target.startswith("/"):
                current = "/"
            parts = [p for p in target.split("/") if p] + parts
            continue
        current = candidate
    return Path(str(root) + current)


def rss_bytes(pid: int) -> int | None:
    """Resident bytes of ``pid`` from /proc/PID/statm; None when it is gone. (Sampling
    the same processes again and again: :class:`RssReader`.)"""
    try:
        with open(PROC / str(pid) / "statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


class RssReader:
    """The RSS of the same processes, second after second (the flight recorder, the
    RSS triggers): each /proc/PID/statm is kept open and read again from its start, a
    pread about 15x cheaper than open, read and close. A kept file belongs to its
    process: once it exits the read fails (a new process with the same pid is opened
    afresh). Thread-safe: the recorder reads in a worker thread, stops on the loop."""

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def read(self, pid: int) -> int | None:
        with self._lock:
            fd = self._fds.get(pid)
            if fd is None:
                try:
                    fd = os.open(PROC / str(pid) / "statm", os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    return None
                self._fds[pid] = fd
            try:
                return int(os.pread(fd, 256, 0).split()[1]) * _PAGE
            except (OSError, IndexError, ValueError):
                os.close(self._fds.pop(pid))
                return None

    def keep_only(self, pids: set[int]) -> None:
        """Close the files of processes no longer sampled."""
        with self._lock:
            for pid in [p for p in self._fds if p not in pids]:
                os.close(self._fds.pop(pid))

    def close(self) -> None:
        self.keep_only(set())

    def __len__(self) -> int:
        return len(self._fds)


def exe_path(pid: int) -> str:
    """The process's executable as it sees it (e.g. ``/app/bin/server``)."""
    try:
        return os.readlink(PROC / str(require_pid(pid)) / "exe")
    except OSError as e:
        raise NotFound(f"cannot read the executable of pid {pid}: {e.strerror}") from e


# --- the pod's processes ------------------------------------------------------

Runtime = Literal["python", "java", "node", "dotnet", "go", "native"]

_CONTAINER_ENV = b"TRACECAR_CONTAINER="
# The last path component of a container's cgroup, for the runtimes a pod meets:
# containerd ("cri-containerd-<id>.scope" or ".../pod<uid>/<id>"), cri-o
# ("crio-<id>.scope"), docker ("docker-<id>.scope" or "/docker/<id>") and podman
# ("libpod-<id>.scope"; "libpod-conmon-<id>" is podman's monitor, not the container).
_CGROUP_ID = re.compile(r"^(?:(?:cri-containerd|crio|docker|libpod)-)?([0-9a-f]{64})(?:\.scope)?$")
_PY_EXE = re.compile(r"^python(\d+\.\d+)?")
_LIBPY = re.compile(r"libpython(\d+\.\d+)")
# .NET's shared framework is versioned by folder: .../shared/Microsoft.NETCore.App/3.1.23/
_DOTNET_FW = re.compile(
    r" (/\S*/shared/Microsoft\.NETCore\.App/(\d+\.\d+\.\d+[^/\s]*))/libcoreclr\.so$", re.M
)


class ProcessInfo(BaseModel):
    """One process of the pod, as ``GET /processes`` shows it (and the other modules use it)."""

    model_config = ConfigDict(frozen=True)

    pid: int
    ppid: int
    comm: str
    cmdline: list[str]
    exe: str | None = Field(description="the executable as the process sees it")
    uid: int
    user: str = Field(description="user name from the container's own /etc/passwd, else the uid")
    mnt_ns: int = Field(description="mount namespace inode: one per container")
    container: str = Field(
        description="TRACECAR_CONTAINER, else the short container id, else mnt-<inode>"
    )
    container_id: str | None = Field(description="from the process's cgroup")
    runtime: Runtime
    runtime_version: str | None = None
    state: str
    threads: int
    cpu_percent: float = Field(description="CPU use (100 = one core) over the sampling window")
    cpu_time_s: float
    rss_bytes: int
    start_time_s: float = Field(description="seconds since boot when the process started")
    perf_map: bool = Field(description="a JIT perf map /tmp/perf-PID.map exists in its own /tmp")


@dataclass(frozen=True, slots=True)
class _Stat:
    ppid: int
    state: str
    ticks: int
    threads: int
    start_ticks: int
    rss_pages: int


_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def parse_stat(text: str) -> _Stat:
    """Parse /proc/PID/stat; comm may contain spaces and parentheses, so split at the last ')'."""
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); field n is rest[n - 3].
    return _Stat(
        ppid=int(rest[1]),
        state=rest[0],
        ticks=int(rest[11]) + int(rest[12]),
        threads=int(rest[17]),
        start_ticks=int(rest[19]),
        rss_pages=int(rest[21]),
    )


def parse_status(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value.strip()
    return out


def container_id_from_cgroup(text: str) -> str | None:
    """The container id in /proc/PID/cgroup (v1 or v2 lines), or None outside a container."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        for part in reversed(path.split("/")):
            m = _CGROUP_ID.match(part)
            if m:
                return m.group(1)
    return None


_KNOWN_NAMES: dict[str, str] = {}
"""Container id -> name, from the agent's settings (set once at start-up)."""


def set_container_names(names: Mapping[str, str]) -> None:
    """Names for containers whose processes carry no TRACECAR_CONTAINER (an attached
    agent's pod was never mutated): the plugin passes them from the pod's status."""
    _KNOWN_NAMES.clear()
    _KNOWN_NAMES.update(names)


def container_env(environ: bytes) -> str | None:
    for item in environ.split(b"\0"):
        if item.startswith(_CONTAINER_ENV):
            name = item[len(_CONTAINER_ENV) :].decode("utf-8", "replace")
            return name or None
    return None


_FLAG_ENV = (b"NODE_OPTIONS=", b"JAVA_TOOL_OPTIONS=", b"JDK_JAVA_OPTIONS=", b"_JAVA_OPTIONS=")
_FLAG_WORDS = re.compile(
    r"^(?:-X|--?perf|--interpreted-frames-native-stack|PYTHONPERFSUPPORT"
    r"|(?:DOTNET|COMPlus)_(?:PerfMapEnabled|EnableEventLog|JITMinOpts)=)"
)
_DOTNET_FLAG_ENV = tuple(
    f"{prefix}{knob}=".encode()
    for prefix in ("DOTNET_", "COMPlus_")
    for knob in ("PerfMapEnabled", "EnableEventLog", "JITMinOpts")
)


def profiling_flags(cmdline: list[str], environ: bytes) -> tuple[str, ...]:
    """The runtime flags that decide what a profiler can see: the command line's and
    those its runtime reads from the environment (NODE_OPTIONS, JAVA_TOOL_OPTIONS...)."""
    words = list(cmdline[1:])
    for item in environ.split(b"\0"):
        if item.startswith(_FLAG_ENV):
            words.extend(item.split(b"=", 1)[1].decode("utf-8", "replace").split())
        elif item.startswith(b"PYTHONPERFSUPPORT=") and item != b"PYTHONPERFSUPPORT=0":
            words.append("PYTHONPERFSUPPORT=1")
        elif item.startswith(_DOTNET_FLAG_ENV):
            words.append(item.decode("utf-8", "replace"))  # e.g. COMPlus_PerfMapEnabled=1
    return tuple(dict.fromkeys(w for w in words if _FLAG_WORDS.match(w)))


def dotnet_framework(maps: str) -> str | None:
    """The shared framework folder a .NET process runs from, as it sees it (the
    folder of its libcoreclr.so: createdump and the tracepoint provider live there)."""
    fw = _DOTNET_FW.search(maps)
    return fw.group(1) if fw else None


def dotnet_env(version: str | None, knob: str) -> str:
    """The environment variable a .NET runtime of ``version`` reads for ``knob``.

    .NET 5 added the ``DOTNET_`` prefix; 3.x (and older) read only ``COMPlus_``
    (seen: 3.1 with DOTNET_PerfMapEnabled=1 writes no perf map). Every version
    still reads ``COMPlus_``, so it is the answer when the version is unknown.
    """
    major = version.split(".", 1)[0] if version else ""
    return f"DOTNET_{knob}" if major.isdigit() and int(major) >= 5 else f"COMPlus_{knob}"


def dotnet_knobs(environ: bytes) -> dict[str, str]:
    """The .NET knobs set in an environment, by their full name (both spellings)."""
    out: dict[str, str] = {}
    for item in environ.split(b"\0"):
        if item.startswith((b"DOTNET_", b"COMPlus_")) and b"=" in item:
            name, value = item.decode("utf-8", "replace").split("=", 1)
            out[name] = value
    return out


def runtime_flags(pid: int) -> tuple[str, ...]:
    """:func:`profiling_flags` of a live process (empty when it cannot be read)."""
    base = Path(f"/proc/{pid}")
    try:
        raw_cmd = (base / "cmdline").read_bytes()
    except OSError:
        return ()
    try:
        environ = (base / "environ").read_bytes()
    except OSError:
        environ = b""
    cmdline = [a.decode("utf-8", "replace") for a in raw_cmd.split(b"\0")[:-1]]
    return profiling_flags(cmdline, environ)


def user_name(passwd: str, uid: int) -> str | None:
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2] == str(uid):
            return fields[0]
    return None


def detect_runtime(exe: str | None, maps: str, elf: ElfFacts | None) -> tuple[Runtime, str | None]:
    """What kind of program this is, from its executable's name, its mappings and its ELF."""
    base = os.path.basename(exe or "")
    m = _PY_EXE.match(base)
    if m:
        lib = _LIBPY.search(maps)
        return "python", m.group(1) or (lib.group(1) if lib else None)
    lib = _LIBPY.search(maps)
    if lib:
        return "python", lib.group(1)
    if base == "java" or "/libjvm.so" in maps:
        return "java", None
    if base in ("dotnet", "corerun") or "/libcoreclr.so" in maps:
        fw = _DOTNET_FW.search(maps)
        return "dotnet", fw.group(2) if fw else None
    if base in ("node", "nodejs") or "/libnode.so" in maps:
        return "node", None
    if elf is not None and elf.go:
        return "go", None
    return "native", None


# --- ELF facts ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ElfFacts:
    """What the section headers say: Go, symbols present (not stripped), debug info."""

    go: bool
    symtab: bool
    debug_info: bool


_elf_cache: dict[tuple[int, int, int], ElfFacts | None] = {}


def elf_facts(pid: int) -> ElfFacts | None:
    """Section facts of ``pid``'s executable, read through /proc/PID/exe (any mount ns).

    Hand-written rather than a full ELF library because it runs for every process
    on every listing: only the section header table and its string table are read,
    and the answer is cached per executable file.
    """
    path = PROC / str(pid) / "exe"
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            key = (st.st_dev, st.st_ino, int(st.st_mtime))
            if key in _elf_cache:
                return _elf_cache[key]
            facts = _read_elf_sections(f)
    except OSError:
        return None
    if len(_elf_cache) > 512:
        _elf_cache.clear()
    _elf_cache[key] = facts
    return facts


def _read_elf_sections(f: BinaryIO) -> ElfFacts | None:
    ident = f.read(64)
    if len(ident) < 52 or ident[:4] != b"\x7fELF":
        return None
    is64 = ident[4] == 2
    end = "<" if ident[5] == 1 else ">"
    try:
        if is64:
            shoff, shentsize, shnum, shstrndx = (
                struct.unpack_from(end + "Q", ident, 0x28)[0],
                *struct.unpack_from(end + "HHH", ident, 0x3A),
            )
        else:
            shoff, shentsize, shnum, shstrndx = (
                struct.unpack_from(end + "I", ident, 0x20)[0],
                *struct.unpack_from(end + "HHH", ident, 0x2E),
            )
        if shoff == 0 or shnum == 0 or shnum > 4096 or shstrndx >= shnum:
            return ElfFacts(go=False, symtab=False, debug_info=False)
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        headers = []
        for i in range(shnum):
            off = i * shentsize
            if is64:
                name, _type, _flags, _addr, s_off, s_size = struct.unpack_from(
                    end + "IIQQQQ", table, off
                )
            else:
                name, _type, _flags, _addr, s_off, s_size = struct.unpack_from(
                    end + "IIIIII", table, off
                )
            headers.append((name, s_off, s_size))
        _, str_off, str_size = headers[shstrndx]
        f.seek(str_off)
        strtab = f.read(min(str_size, 1 << 20))
    except (struct.error, IndexError, OSError):
        return None
    names = set()
    for name_off, _, _ in headers:
        endpos = strtab.find(b"\0", name_off)
        names.add(strtab[name_off : endpos if endpos >= 0 else None].decode("latin-1"))
    return ElfFacts(
        go=bool(names & {".go.buildinfo", ".gopclntab", ".note.go.buildid"}),
        symtab=".symtab" in names,
        debug_info=".debug_info" in names or ".gnu_debuglink" in names,
    )


# --- reading one process ----------------------------------------------------------


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _mnt_ns(pid: int) -> int:
    return os.stat(PROC / str(pid) / "ns" / "mnt").st_ino


def _uptime_s() -> float:
    return float(_read_text(PROC / "uptime").split()[0])


def cpu_ticks() -> dict[int, int]:
    """CPU ticks (user + system) of every process now: the first half of a CPU sample."""
    out: dict[int, int] = {}
    for pid in _pids():
        with contextlib.suppress(OSError, ValueError, IndexError):
            out[pid] = parse_stat(_read_text(PROC / str(pid) / "stat")).ticks
    return out


def _pids() -> list[int]:
    return sorted(int(p) for p in os.listdir(PROC) if p.isdigit())


class _Reader:
    """Reads processes with per-call caches (passwd per container, names per mount ns)."""

    def __init__(self, *, before: Mapping[int, int] | None, interval_s: float) -> None:
        self.before = before
        self.interval_s = interval_s
        self.uptime = _uptime_s()
        self.passwd: dict[int, str] = {}

    def read(self, pid: int) -> ProcessInfo | None:
        """None when the process vanished (or is a kernel thread) while being read."""
        base = PROC / str(pid)
        try:
            st = parse_stat(_read_text(base / "stat"))
            status = parse_status(_read_text(base / "status"))
            raw_cmd = (base / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return None
        try:
            mnt = _mnt_ns(pid)
        except OSError:
            # Not ours to inspect (no CAP_SYS_PTRACE), or a zombie: it has no namespaces.
            mnt = 0
        cmdline = [a.decode("utf-8", "replace") for a in raw_cmd.split(b"\0")[:-1]] or []
        if not cmdline and (status.get("Kthread") == "1" or pid == 2 or st.ppid == 2):
            return None  # a kernel thread (visible only outside a pod's PID namespace)
        try:
            exe: str | None = os.readlink(base / "exe")
        except OSError:
            exe = None
        try:
            maps = _read_text(base / "maps")
        except OSError:
            maps = ""
        try:
            environ = (base / "environ").read_bytes()
        except OSError:
            environ = b""
        try:
            cid = container_id_from_cgroup(_read_text(base / "cgroup"))
        except OSError:
            cid = None
        uids = status.get("Uid", "0 0").split()
        uid = int(uids[1] if len(uids) > 1 else uids[0])
        runtime, version = detect_runtime(exe, maps, elf_facts(pid) if exe else None)
        name = (
            container_env(environ)
            or (_KNOWN_NAMES.get(cid) if cid else None)
            or (cid[:12] if cid else None)
            or f"mnt-{mnt}"
        )
        cpu_s = st.ticks / _CLK_TCK
        if self.before is not None and self.interval_s > 0 and pid in self.before:
            pct = 100.0 * (st.ticks - self.before[pid]) / _CLK_TCK / self.interval_s
        else:
            age = self.uptime - st.start_ticks / _CLK_TCK
            pct = 100.0 * cpu_s / age if age > 0 else 0.0
        return ProcessInfo(
            pid=pid,
            ppid=st.ppid,
            comm=status.get("Name", ""),
            cmdline=cmdline,
            exe=exe,
            uid=uid,
            user=self.user(pid, mnt, uid),
            mnt_ns=mnt,
            container=name,
            container_id=cid,
            runtime=runtime,
            runtime_version=version,
            state=st.state,
            threads=st.threads,
            cpu_percent=round(max(pct, 0.0), 1),
            cpu_time_s=round(cpu_s, 2),
            rss_bytes=st.rss_pages * _PAGE,
            start_time_s=round(st.start_ticks / _CLK_TCK, 2),
            perf_map=has_perf_map(pid),
        )

    def user(self, pid: int, mnt: int, uid: int) -> str:
        if mnt not in self.passwd:
            try:
                self.passwd[mnt] = resolve_in_root(pid, "/etc/passwd").read_text(
                    encoding="utf-8", errors="replace"
                )
            except (OSError, AgentError):
                self.passwd[mnt] = ""
        return user_name(self.passwd[mnt], uid) or str(uid)


def open_perf_map(pid: int) -> BinaryIO:
    """``pid``'s JIT perf map, opened for reading; OSError when it has none (or it is gone).

    The app controls its /tmp: the path is resolved inside its root (an absolute
    symlink must not lead the agent to its own files), the last component is not
    followed at open time (a symlink swapped in meanwhile), and anything but a
    regular file (a FIFO would block the read forever, /dev/zero never end) is refused.
    """
    try:
        path = resolve_in_root(pid, f"/tmp/perf-{pid}.map")
    except AgentError as e:
        raise FileNotFoundError(e.detail) from e
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def has_perf_map(pid: int) -> bool:
    """A JIT perf map /tmp/perf-PID.map in ``pid``'s own /tmp (see :func:`open_perf_map`)."""
    try:
        return resolve_in_root(pid, f"/tmp/perf-{pid}.map").is_file()
    except (OSError, AgentError):
        return False


def _fill_names(infos: list[ProcessInfo]) -> list[ProcessInfo]:
    """A process without TRACECAR_CONTAINER takes the name its mount namespace has elsewhere."""
    named: dict[int, str] = {}
    for p in infos:
        if not p.container.startswith("mnt-") and p.container != (p.container_id or "")[:12]:
            named.setdefault(p.mnt_ns, p.container)
    return [
        p.model_copy(update={"container": named[p.mnt_ns]})
        if p.mnt_ns in named and p.container != named[p.mnt_ns]
        else p
        for p in infos
    ]


def list_processes(
    *, before: Mapping[int, int] | None = None, interval_s: float = 0.0
) -> list[ProcessInfo]:
    """Every process in our PID namespace (kernel threads left out).

    CPU use is the average since each process started, unless ``before`` (from
    :func:`cpu_ticks`, taken ``interval_s`` seconds earlier) gives a recent window.
    """
    reader = _Reader(before=before, interval_s=interval_s)
    infos = [info for pid in _pids() if (info := reader.read(pid)) is not None]
    return _fill_names(infos)


def process_info(pid: int) -> ProcessInfo:
    """One process (404 if there is no such process)."""
    require_pid(pid)
    info = _Reader(before=None, interval_s=0.0).read(pid)
    if info is None:
        raise NotFound(f"no process with pid {pid} in this pod (see GET /processes)")
    if info.container.startswith("mnt-"):
        for other in list_processes():
            if other.pid == pid:
                return other
    return info


def pids_of_container(name: str, *, procs: Sequence[ProcessInfo] | None = None) -> list[int]:
    """The pids of the container called ``name`` (404 naming the containers there are).

    ``procs``: a listing the caller already has (a /proc walk reads every process's maps).
    """
    if procs is None:
        procs = list_processes()
    pids = [p.pid for p in procs if p.container == name]
    if not pids:
        known = sorted({p.container for p in procs})
        raise NotFound(f"no container named {name!r} in this pod; there are: {', '.join(known)}")
    return pids


def own_pid_ns() -> int:
    """The inode number of the agent's PID namespace (the pod's, with a shared one)."""
    link = os.readlink(PROC / "self" / "ns" / "pid")  # "pid:[4026531836]"
    return int(link.removeprefix("pid:[").removesuffix("]"))


def own_tree() -> set[int]:
    """The agent itself, its descendants and its container: never profiled as 'the pod'.

    "Its container" (every process in the agent's mount namespace) only when the
    agent has a mount namespace of its own, as a sidecar does: run on a host
    (``scripts/run``), that namespace is everybody's, and only its own tree is left out.
    """
    me = os.getpid()
    parents: dict[int, int] = {}
    mine = set()
    try:
        my_mnt = _mnt_ns(me)
        if my_mnt == _mnt_ns(1):
            my_mnt = -1
    except OSError:
        # pid 1's namespace is unreadable (a VM's own init): not a pod's sidecar either.
        my_mnt = -1
    for pid in _pids():
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[pid] = parse_stat(_read_text(PROC / str(pid) / "stat")).ppid
            if _mnt_ns(pid) == my_mnt:
                mine.add(pid)
    mine.add(me)
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                changed = True
    return mine


# --- frame pointers ------------------------------------------------------------------

_fp_cache: dict[tuple[int, int, int], bool | None] = {}
_PUSH_RBP_MOV = b"\x55\x48\x89\xe5"
_ENDBR64 = b"\xf3\x0f\x1e\xfa"


def frame_pointers(pid: int) -> bool | None:
    """Was ``pid``'s executable built with frame pointers? None = cannot tell cheaply.

    x86-64 only: looks at the first bytes of up to 32 sizeable functions from
    ``.symtab`` for ``push %rbp; mov %rsp,%rbp`` (after an optional ``endbr64``).
    Built with ``-fomit-frame-pointer`` (gcc's default at -O1 and up) most of them
    lack it. A stripped executable has no ``.symtab``: unknown.
    """
    path = PROC / str(pid) / "exe"
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            key = (st.st_dev, st.st_ino, int(st.st_mtime))
            if key not in _fp_cache:
                if len(_fp_cache) > 512:
                    _fp_cache.clear()
                _fp_cache[key] = _frame_pointers(f)
            return _fp_cache[key]
    except OSError:
        return None


def _frame_pointers(f: BinaryIO) -> bool | None:
    head = f.read(64)
    # 64-bit little-endian x86-64 (e_machine 62) only.
    if len(head) < 64 or head[:6] != b"\x7fELF\x02\x01" or head[18:20] != b"\x3e\x00":
        return None
    try:
        (shoff,) = struct.unpack_from("<Q", head, 0x28)
        shentsize, shnum, _ = struct.unpack_from("<HHH", head, 0x3A)
        if shoff == 0 or shnum == 0 or shnum > 4096 or shentsize < 64:
            return None
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        sections = [struct.unpack_from("<IIQQQQII", table, i * shentsize)[:8] for i in range(shnum)]
        symtab = next((s for s in sections if s[1] == 2), None)  # SHT_SYMTAB
        if symtab is None:
            return None
        f.seek(symtab[4])
        raw = f.read(min(symtab[5], 24 * 4000))
        funcs: list[tuple[int, int]] = []
        for off in range(0, len(raw) - 23, 24):
            _name, info, _other, shndx, value, size = struct.unpack_from("<IBBHQQ", raw, off)
            if info & 0xF == 2 and size >= 32 and 0 < shndx < len(sections):
                funcs.append((value, shndx))
            if len(funcs) >= 32:
                break
        if len(funcs) < 4:
            return None
        with_fp = 0
        for value, shndx in funcs:
            _n, _t, _fl, s_addr, s_off, _sz, _l, _i = sections[shndx]
            f.seek(s_off + value - s_addr)
            code = f.read(8)
            if code.startswith(_ENDBR64):
                code = code[4:]
            with_fp += code.startswith(_PUSH_RBP_MOV)
    except (struct.error, OSError, ValueError):
        return None
    return with_fp * 2 >= len(funcs)
