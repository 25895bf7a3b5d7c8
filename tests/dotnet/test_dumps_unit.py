"""The dump size estimate (pure): what the free-space check before writing relies on."""

from __future__ import annotations

from agent.dumps._service import estimate

MAPS = """\
55d0c0000000-55d0c0001000 r--p 00000000 fe:00 1   /usr/share/dotnet/dotnet
55d0c0001000-55d0c0011000 r-xp 00001000 fe:00 1   /usr/share/dotnet/dotnet
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
7f0000100000-7f0010100000 ---p 00000000 00:00 0
7f0010100000-7f0010300000 r-xp 00000000 fe:00 2   /usr/share/dotnet/shared/NETCore/libcoreclr.so
7f0010300000-7f0010301000 rw-p 00200000 fe:00 2   /usr/share/dotnet/shared/NETCore/libcoreclr.so
7ffd00000000-7ffd00004000 r--p 00000000 00:00 0   [vvar]
"""


def test_estimate_by_type() -> None:
    full = estimate(MAPS, 4, "full")
    heap = estimate(MAPS, 4, "heap")
    mini = estimate(MAPS, 4, "mini")
    # full: every readable mapping but [vvar]; reserved (---p) memory is never written
    assert full == 0x1000 + 0x10000 + 0x100000 + 0x200000 + 0x1000
    # heap: anonymous and writable ones
    assert heap == 0x100000 + 0x1000
    assert mini <= heap < full
