"""agent.symbolize without processes: the pclntab reader against the Go toolchain's own
gofmt (its .symtab is the reference, and a stripped copy must name the same), corrupt
and truncated tables, the CFA rule from .eh_frame, debug-file search, and the
collapser's symbolizer seam with a fake symbolizer."""

from __future__ import annotations

import shutil
import subprocess
import zlib
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from agent import symbols
from agent.symbolize import _objects
from agent.symbolize._ehframe import RSP
from agent.symbolize.debuginfo import DebuginfodCache, find_debug_file, parse_urls
from agent.symbolize.gopclntab import GoTable, PclntabError
from tracecar_formats.collapse import collapse_text

GOFMT = Path("/usr/local/go/bin/gofmt")


@pytest.fixture(scope="module")
def gofmt() -> Path:
    found = shutil.which("gofmt") or (str(GOFMT) if GOFMT.exists() else None)
    if found is None:
        pytest.skip("no Go toolchain here (gofmt is the reference Go binary)")
    return Path(found).resolve()


@pytest.fixture(scope="module")
def stripped_gofmt(gofmt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gofmt") / "gofmt-stripped"
    subprocess.run(["objcopy", "--strip-all", str(gofmt), str(out)], check=True)
    return out


def test_pclntab_names_match_the_symtab(gofmt: Path, stripped_gofmt: Path) -> None:
    syms = symbols.object_symbols(gofmt)
    obj = _objects.load_object(stripped_gofmt)
    assert obj is not None and obj.go is not None and not obj.has_symtab
    tab = obj.go
    assert tab.version == "1.20+" and tab.inline
    by_address: dict[int, set[str]] = {}
    for s in syms.functions:  # aliases share an address (runtime.text, the first function)
        by_address.setdefault(s.address, set()).add(s.name.removesuffix(".abi0"))
    checked = 0
    for address, names in by_address.items():
        i = tab.func_index(address)
        if i is None or tab.entry(i) != address:
            continue  # assembly trampolines and the like, outside the pclntab
        # the linker writes "·" as "." in ELF symbol names
        assert tab.name(i).replace("·", ".") in names, (hex(address), names)
        checked += 1
    assert checked > 1000
    main = [(n, e) for n, e, _ in tab.functions() if n == "main.main"]
    assert main, "main.main is in every Go program's pclntab"
    frames = tab.frames(main[0][1])
    assert frames[-1].name == "main.main" and frames[-1].file.endswith(".go")
    assert frames[-1].line > 0
    # Entry PCs have pushed nothing: the return address is at SP.
    assert tab.sp_delta(main[0][1]) == 0


def test_inlined_frames_are_found(stripped_gofmt: Path) -> None:
    obj = _objects.load_object(stripped_gofmt)
    assert obj is not None and obj.go is not None
    tab = obj.go
    inlined = 0
    for _name, entry, size in tab.functions()[:3000]:
        for pc in range(entry, entry + size, 16):
            chain = tab.frames(pc, lines=False)
            if len(chain) > 1:
                assert all(f.inlined for f in chain[:-1]) and not chain[-1].inlined
                inlined += 1
                break
    assert inlined > 50


def _pclntab_bytes(path: Path) -> tuple[bytes, int]:
    with path.open("rb") as f:
        elf = ELFFile(f)
        sec = elf.get_section_by_name(".gopclntab")
        assert sec is not None
        return sec.data(), sec["sh_addr"]


@pytest.mark.parametrize("keep", [0, 7, 40, 64, 5000, 0.5, 0.9])
def test_truncated_pclntab_is_refused_or_fails_cleanly(gofmt: Path, keep: float) -> None:
    data, _ = _pclntab_bytes(gofmt)
    cut = data[: int(len(data) * keep)] if isinstance(keep, float) else data[:keep]
    try:
        tab = GoTable(cut, 0)
    except PclntabError:
        return
    # What opened must fail cleanly (PclntabError) or answer, never raise otherwise.
    for i in range(0, tab.nfunc, max(1, tab.nfunc // 200)):
        try:
            tab.frames(tab.entry(i) + 1)
            tab.sp_delta(tab.entry(i) + 1)
        except PclntabError:
            pass


def test_corrupt_or_old_pclntab(gofmt: Path) -> None:
    data, _ = _pclntab_bytes(gofmt)
    with pytest.raises(PclntabError, match=r"1\.16-1\.17"):
        GoTable(b"\xfa\xff\xff\xff" + data[4:], 0)
    with pytest.raises(PclntabError, match="not a 64-bit Go"):
        GoTable(b"\x00" * 64, 0)
    # A function table pointing past the end.
    bad = bytearray(data)
    bad[8:16] = (10**6).to_bytes(8, "little")
    with pytest.raises(PclntabError):
        GoTable(bytes(bad[:4096]), 0)


def test_eh_frame_cfa_at_function_entries() -> None:
    libc = Path("/usr/lib/x86_64-linux-gnu/libc.so.6")
    obj = _objects.load_object(libc)
    assert obj is not None
    eh = obj.eh_frame()
    assert eh is not None
    syms = obj.functions()
    assert syms is not None
    seen = 0
    for s in syms.functions[:400]:
        reg = eh.cfa_register(s.address)
        if reg is not None:
            assert reg == RSP, s.name  # nothing pushed yet at an entry
            seen += 1
    assert seen > 100


def test_debug_file_search(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "app").mkdir(parents=True)
    debug = root / "app" / "prog.debug"
    debug.write_bytes(b"not the right file")
    crc = zlib.crc32(debug.read_bytes())
    found, ignored = find_debug_file(
        root,
        "/app/prog",
        build_id=None,
        debuglink=("prog.debug", crc),
        debuginfod=None,
        deadline=0,
    )
    assert found.source == "debuglink" and found.path == debug and not ignored
    found, ignored = find_debug_file(
        root,
        "/app/prog",
        build_id=None,
        debuglink=("prog.debug", crc ^ 1),
        debuginfod=None,
        deadline=0,
    )
    assert found.source == "none" and "CRC32" in ignored[0]


def test_debuginfod_down_is_fast_and_remembered(tmp_path: Path) -> None:
    assert parse_urls("http://a:1/ ftp://x https://b") == ["http://a:1", "https://b"]
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = DebuginfodCache(
        urls=[f"http://127.0.0.1:{port}"], directory=tmp_path, max_bytes=1 << 20, timeout_s=2
    )
    path, why = cache.get("ab" * 20, deadline=time.monotonic() + 5)
    assert path is None and f"127.0.0.1:{port}" in why
    again, why2 = cache.get("ab" * 20, deadline=time.monotonic() + 5)
    assert again is None and why2 == why  # not asked again
    assert cache.get("not-hex", deadline=time.monotonic() + 5)[0] is None


def test_debuginfod_cache_eviction(tmp_path: Path) -> None:
    import os
    import time

    cache = DebuginfodCache(urls=[], directory=tmp_path, max_bytes=2500, timeout_s=1)
    for i, name in enumerate(("a", "b", "c")):
        p = tmp_path / f"{name * 40}.debug"
        p.write_bytes(b"x" * 1000)
        os.utime(p, (time.time() - 100 + i, time.time() - 100 + i))
    cache._evict()
    assert sorted(p.name[0] for p in tmp_path.glob("*.debug")) == ["b", "c"]


class FakeSymbolizer:
    """Our own seam: names by PC, a hidden caller for one (leaf, return) pair."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bytes, bool]] = []

    def frames(
        self, pid: bytes, pc: bytes, sym: bytes, mod: bytes, *, caller: bool
    ) -> list[bytes] | None:
        self.calls.append((pid, pc, caller))
        if mod != b"/srv/app":
            return None
        table = {b"10": [b"main.hot", b"main.mix"], b"20": [b"main.main"], b"30": [b"runtime.main"]}
        return table.get(pc)

    def missing_caller(
        self, pid: bytes, leaf: tuple[bytes, bytes], ret: tuple[bytes, bytes]
    ) -> bytes | None:
        return b"main.verify" if (leaf[0], ret[0]) == (b"10", b"20") else None


PERF_TEXT = b"""app 7/7 cpu-clock:pppH:
\t          ffff01 schedule ([kernel.kallsyms])
\t              10 [unknown] (/srv/app)
\t              20 [unknown] (/srv/app)
\t              30 [unknown] (/srv/app)

app 7/7 cpu-clock:pppH:
\t              40 [unknown] (/srv/app)
\t              30 [unknown] (/srv/app)

other 9/9 cpu-clock:pppH:
\t              10 [unknown] (/srv/app)
\t              50 libc_fn (/usr/lib/libc.so.6)

"""


def test_collapser_symbolizer_seam() -> None:
    fake = FakeSymbolizer()
    stacks = collapse_text(PERF_TEXT, symbolizer=fake)
    assert stacks == {
        "app;runtime.main;main.main;main.verify;main.hot;main.mix;schedule": 1,
        "app;runtime.main;[app]": 1,
        "other;libc_fn;main.hot;main.mix": 1,
    }
    # Return addresses are asked as callers, the sampled PCs not; per pid.
    assert (b"7", b"20", True) in fake.calls and (b"7", b"10", False) in fake.calls
    assert (b"9", b"10", False) in fake.calls
    # Without a symbolizer: stackcollapse-perf's own output.
    assert collapse_text(PERF_TEXT) == {
        "app;[app];[app];[app];schedule": 1,
        "app;[app];[app]": 1,
        "other;libc_fn;[app]": 1,
    }


def test_stripped_go_functions_are_listed(stripped_gofmt: Path) -> None:
    """GET /processes/{pid}/symbols, uprobes and the bpftrace stacks' names use these."""
    syms = symbols.object_symbols(stripped_gofmt)
    main = syms.lookup("main.main")
    assert main is not None and main.size > 0
    assert syms.function_at(main.address + 1) == main
