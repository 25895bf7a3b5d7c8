"""Unit tests of agent.procfs: parsing /proc text, and reading this very process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import procfs
from agent.errors import NotFound
from agent.procfs import ElfFacts

CID = "4f3a" + "0" * 56 + "beef"


def test_parse_stat_with_awkward_comm() -> None:
    text = (
        "1234 (my (weird) app) R 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 "
        "9000 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0"
    )
    st = procfs.parse_stat(text)
    assert st.ppid == 1 and st.state == "R" and st.ticks == 300
    assert st.threads == 3 and st.start_ticks == 9000 and st.rss_pages == 2048


@pytest.mark.parametrize(
    "cgroup",
    [
        f"0::/kubepods.slice/kubepods-burstable.slice/cri-containerd-{CID}.scope",
        f"0::/kubepods/burstable/pod1234/{CID}",
        f"0::/system.slice/crio-{CID}.scope",
        f"12:memory:/docker/{CID}\n0::/",
        f"0::/system.slice/docker-{CID}.scope",
        f"0::/machine.slice/libpod-{CID}.scope/container",
        f"0::/user.slice/libpod-{CID}.scope",
    ],
)
def test_container_id_from_cgroup(cgroup: str) -> None:
    assert procfs.container_id_from_cgroup(cgroup) == CID


def test_no_container_id() -> None:
    assert procfs.container_id_from_cgroup("0::/\n4:memory:/process_api/d18aa1df") is None
    assert procfs.container_id_from_cgroup(f"0::/machine.slice/libpod-conmon-{CID}.scope") is None


def test_container_env_and_users() -> None:
    env = b"PATH=/bin\0TRACECAR_CONTAINER=web\0HOME=/\0"
    assert procfs.container_env(env) == "web"
    assert procfs.container_env(b"TRACECAR_CONTAINER=\0") is None
    assert procfs.container_env(b"") is None
    passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
    assert procfs.user_name(passwd, 1000) == "app"
    assert procfs.user_name(passwd, 0) == "root"
    assert procfs.user_name(passwd, 42) is None


DOTNET_MAPS = (
    "7f5a72400000-7f5a7264e000 r-xp 00000000 fe:00 966851   "
    "/usr/share/dotnet/shared/Microsoft.NETCore.App/3.1.23/libcoreclr.so\n"
    "7f5a7264e000-7f5a7264f000 rwxp 0024e000 fe:00 966851   "
    "/usr/share/dotnet/shared/Microsoft.NETCore.App/3.1.23/libcoreclr.so\n"
)


def test_dotnet_framework_and_knob_spelling() -> None:
    fw = procfs.dotnet_framework(DOTNET_MAPS)
    assert fw == "/usr/share/dotnet/shared/Microsoft.NETCore.App/3.1.23"
    assert procfs.dotnet_framework("7f r-xp /usr/lib/libc.so.6\n") is None
    # 3.x reads COMPlus_ only; DOTNET_ from .NET 5; COMPlus_ when the version is unknown
    assert procfs.dotnet_env("3.1.23", "PerfMapEnabled") == "COMPlus_PerfMapEnabled"
    assert procfs.dotnet_env("2.1.0", "EnableEventLog") == "COMPlus_EnableEventLog"
    assert procfs.dotnet_env("5.0.17", "PerfMapEnabled") == "DOTNET_PerfMapEnabled"
    assert procfs.dotnet_env("8.0.1", "PerfMapEnabled") == "DOTNET_PerfMapEnabled"
    assert procfs.dotnet_env(None, "PerfMapEnabled") == "COMPlus_PerfMapEnabled"
    env = b"PATH=/bin\0DOTNET_PerfMapEnabled=1\0COMPlus_EnableEventLog=1\0"
    assert procfs.dotnet_knobs(env) == {
        "DOTNET_PerfMapEnabled": "1",
        "COMPlus_EnableEventLog": "1",
    }
    assert procfs.profiling_flags(["dotnet", "app.dll"], env) == (
        "DOTNET_PerfMapEnabled=1",
        "COMPlus_EnableEventLog=1",
    )


@pytest.mark.parametrize(
    ("exe", "maps", "elf", "expected"),
    [
        ("/usr/bin/python3.12", "", None, ("python", "3.12")),
        ("/usr/bin/uwsgi", "7f r-xp /lib/libpython3.11.so.1.0\n", None, ("python", "3.11")),
        ("/opt/java/bin/java", "", None, ("java", None)),
        ("/app/launcher", "7f r-xp /opt/jdk/lib/server/libjvm.so\n", None, ("java", None)),
        ("/usr/bin/node", "", None, ("node", None)),
        ("/app/App", "7f r-xp /usr/share/dotnet/shared/libcoreclr.so\n", None, ("dotnet", None)),
        ("/usr/share/dotnet/dotnet", DOTNET_MAPS, None, ("dotnet", "3.1.23")),
        ("/app/App", DOTNET_MAPS.replace("3.1.23", "8.0.1"), None, ("dotnet", "8.0.1")),
        ("/app/server", "", ElfFacts(go=True, symtab=True, debug_info=False), ("go", None)),
        ("/app/server", "", ElfFacts(go=False, symtab=False, debug_info=False), ("native", None)),
        (None, "", None, ("native", None)),
    ],
)  # fmt: skip
def test_detect_runtime(
    exe: str | None, maps: str, elf: ElfFacts | None, expected: tuple[str, str | None]
) -> None:
    assert procfs.detect_runtime(exe, maps, elf) == expected


def test_this_process() -> None:
    me = procfs.process_info(os.getpid())
    assert me.pid == os.getpid() and me.runtime == "python"
    assert me.runtime_version == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert me.cmdline and me.rss_bytes > 0 and me.mnt_ns > 0
    assert me.exe is not None and me.user
    assert any(p.pid == os.getpid() for p in procfs.list_processes())
    assert os.getpid() in procfs.own_tree()
    facts = procfs.elf_facts(os.getpid())
    assert facts is not None and facts.go is False


def test_unknown_pid() -> None:
    with pytest.raises(NotFound):
        procfs.process_info(4_000_000)
    with pytest.raises(NotFound):
        procfs.pids_of_container("no-such-container-anywhere")


def test_cpu_sampling() -> None:
    before = procfs.cpu_ticks()
    assert os.getpid() in before
    end = sum(range(3_000_000))  # burn a little CPU between the two readings
    assert end > 0
    procs = procfs.list_processes(before=before, interval_s=0.5)
    assert all(p.cpu_percent >= 0 for p in procs)


FP_PROGRAM = r"""
#include <unistd.h>
volatile int sink;
int f1(volatile int x){int s=0; for(int i=0;i<x;i++) s+=i*x; sink=s; return s;}
int f2(volatile int x){int s=0; for(int i=0;i<x;i++) s^=i*x+3; sink=s; return s;}
int f3(volatile int x){int s=0; for(int i=0;i<x;i++) s+=i*7; sink=s; return s;}
int f4(volatile int x){int s=1; for(int i=0;i<x;i++) s*=i|1; sink=s; return s;}
int main(void){ f1(10); f2(10); f3(10); f4(10); pause(); return 0; }
"""


@pytest.mark.parametrize(("flags", "expected"), [(["-fno-omit-frame-pointer"], True), ([], False)])
def test_frame_pointer_detection(tmp_path: Path, flags: list[str], expected: bool) -> None:
    src = tmp_path / "fp.c"
    src.write_text(FP_PROGRAM)
    exe = tmp_path / "fp"
    subprocess.run(["gcc", "-O2", *flags, "-o", str(exe), str(src)], check=True, timeout=60)
    proc = subprocess.Popen([str(exe)])
    try:
        assert procfs.frame_pointers(proc.pid) is expected
        stripped = tmp_path / "fp-stripped"
        subprocess.run(["strip", "-o", str(stripped), str(exe)], check=True, timeout=30)
    finally:
        proc.kill()
        proc.wait()
    proc = subprocess.Popen([str(stripped)])
    try:
        assert procfs.frame_pointers(proc.pid) is None  # no .symtab: cannot tell
        facts = procfs.elf_facts(proc.pid)
        assert facts is not None and not facts.symtab
    finally:
        proc.kill()
        proc.wait()


def test_running_is_false_for_a_zombie_and_a_gone_pid() -> None:
    """A child that exited and is not reaped yet is a zombie: exited, for a profile."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    assert procfs.running(os.getpid())
    try:
        deadline = time.monotonic() + 60
        while procfs.running(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)  # exiting: the exit flag, then the zombie (not reaped: no wait)
        assert not procfs.running(child.pid)
        assert (procfs.PROC / str(child.pid)).exists()  # the zombie's /proc entry is there
    finally:
        child.wait(timeout=60)
    assert not procfs.running(child.pid)
