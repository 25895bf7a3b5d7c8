"""agent.symbolize.dwarf without processes: inlined chains of a gcc -O2 -g build against
binutils' ``addr2line -i`` (the reference perf's ``--inline`` uses), the same from a
separate debug file, a C++ call inlined from a namespace, the deadline, and objects
without or with broken DWARF; and a slow debuginfod server costing its timeout only."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from agent.symbolize.debuginfo import DebuginfodCache
from agent.symbolize.dwarf import DwarfInline, OverBudget, load_dwarf

# Two levels of inlining into a hot caller: mix_step into scramble_bits into hot_loop.
INLINE_C = r"""
#include <stdint.h>
volatile uint64_t sink;
static inline __attribute__((always_inline)) uint64_t mix_step(uint64_t i, uint64_t s) {
    return (i * i) ^ (s >> 3);
}
static inline __attribute__((always_inline)) uint64_t scramble_bits(uint64_t n) {
    uint64_t s = 0;
    for (uint64_t i = 0; i < n; i++) s += mix_step(i, s);
    return s;
}
__attribute__((noinline)) uint64_t hot_loop(uint64_t n) {
    uint64_t t = 0;
    for (uint64_t i = 0; i < n / 4; i++) t ^= i * 2654435761u;
    return scramble_bits(n) + t;
}
int main(void) {
    volatile uint64_t n = 3000;
    sink += hot_loop(n);
    return 0;
}
"""

INLINE_CXX = r"""
namespace geo { struct Grid {
    static inline __attribute__((always_inline)) long cell(long i) { return (i * 7) ^ (i >> 2); }
}; }
__attribute__((noinline)) long walk(long n) {
    long s = 0;
    for (long i = 0; i < n; i++) s += geo::Grid::cell(i + s);
    return s;
}
int main() { volatile long n = 100; return (int)walk(n); }
"""


def _build(tmp: Path, source: str, *, cxx: bool = False) -> Path:
    compiler = "g++" if cxx else "gcc"
    if shutil.which(compiler) is None:
        pytest.skip(f"no {compiler}")
    src = tmp / ("prog.cc" if cxx else "prog.c")
    src.write_text(source)
    out = tmp / "prog"
    subprocess.run([compiler, "-O2", "-g", "-o", str(out), str(src)], check=True, timeout=120)
    return out


def _function(path: Path, name: str) -> tuple[int, int]:
    with path.open("rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        for s in symtab.iter_symbols():  # type: ignore[union-attr]
            if s.name == name:
                return int(s["st_value"]), int(s["st_size"])
    raise AssertionError(f"no {name}")


def _addr2line(path: Path, pcs: list[int]) -> list[tuple[str, ...]]:
    if shutil.which("addr2line") is None:
        pytest.skip("no addr2line")
    out = subprocess.run(
        ["addr2line", "-e", str(path), "-i", "-f", "-a"],
        input="".join(f"{pc:x}\n" for pc in pcs),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    chains = []
    for block in out.split("0x")[1:]:
        names = block.splitlines()[1:][0::2]  # (function, file:line) pairs, innermost first
        chains.append(tuple(reversed(names[:-1])))
    return chains


def _far() -> float:
    return time.monotonic() + 60


@pytest.fixture(scope="module")
def prog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("inline"), INLINE_C)


def test_inlined_chains_match_addr2line(prog: Path) -> None:
    start, size = _function(prog, "hot_loop")
    pcs = list(range(start, start + size))
    dw = load_dwarf(prog)
    ours = [dw.inlined(pc, deadline=_far()) for pc in pcs]
    assert ours == _addr2line(prog, pcs)
    assert ("scramble_bits",) in ours
    assert ("scramble_bits", "mix_step") in ours or ("scramble_bits",) in ours
    assert () in ours  # hot_loop's own code


def test_separate_debug_file_gives_the_same(prog: Path, tmp_path: Path) -> None:
    debug = tmp_path / "prog.debug"
    subprocess.run(["objcopy", "--only-keep-debug", str(prog), str(debug)], check=True)
    stripped = tmp_path / "prog.stripped"
    subprocess.run(["objcopy", "--strip-all", str(prog), str(stripped)], check=True)
    with pytest.raises(ValueError, match=r"no \.debug_info"):
        load_dwarf(stripped)
    start, size = _function(prog, "hot_loop")
    full, sep = load_dwarf(prog), load_dwarf(debug)
    for pc in range(start, start + size):
        assert sep.inlined(pc, deadline=_far()) == full.inlined(pc, deadline=_far())


def test_cxx_inlined_method_is_qualified(tmp_path: Path) -> None:
    exe = _build(tmp_path, INLINE_CXX, cxx=True)
    start, size = _function(exe, "_Z4walkl")
    dw = load_dwarf(exe)
    chains = {dw.inlined(pc, deadline=_far()) for pc in range(start, start + size)}
    assert ("geo::Grid::cell",) in chains, chains


def test_deadline_stops_decoding_and_a_later_call_finishes(prog: Path) -> None:
    start, _ = _function(prog, "hot_loop")
    with prog.open("rb") as f:
        dw = DwarfInline(f)
        dw_units = dw.units_decoded
        # Below the check interval the unit decodes whatever the deadline: force one.
        import agent.symbolize.dwarf as mod

        old = mod._CHECK_EVERY
        mod._CHECK_EVERY = 1
        try:
            with pytest.raises(OverBudget):
                dw.inlined(start + 1, deadline=time.monotonic() - 1)
        finally:
            mod._CHECK_EVERY = old
        assert dw.units_decoded == dw_units
        assert dw.inlined(start + 1, deadline=_far()) == _addr2line(prog, [start + 1])[0]


def test_corrupt_debug_info_is_an_error_not_a_crash(prog: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    data = bytearray(prog.read_bytes())
    with prog.open("rb") as f:
        sec = ELFFile(f).get_section_by_name(".debug_info")
        off, size = sec["sh_offset"], sec["sh_size"]  # type: ignore[index]
    data[off + 11 : off + size] = b"\xff" * (size - 11)  # past the first unit's header
    broken.write_bytes(bytes(data))
    start, _ = _function(prog, "hot_loop")
    try:
        dw = load_dwarf(broken)
    except ValueError:
        return  # refused up front: fine
    try:
        assert isinstance(dw.inlined(start + 1, deadline=_far()), tuple)
    except ValueError as e:
        assert "unreadable DWARF" in str(e)


def test_slow_debuginfod_costs_its_timeout_only(tmp_path: Path) -> None:
    """A server that accepts and never answers: the fetch gives up after the timeout,
    says why, and is not asked again for that build-id."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # read nothing, answer nothing

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        port = srv.getsockname()[1]
        cache = DebuginfodCache(
            urls=[f"http://127.0.0.1:{port}"], directory=tmp_path, max_bytes=1 << 20, timeout_s=1
        )
        began = time.monotonic()
        path, why = cache.get("cd" * 20, deadline=time.monotonic() + 30)
        took = time.monotonic() - began
        assert path is None and f"127.0.0.1:{port}" in why and "timed out" in why.lower(), why
        assert took < 25, took  # bounded by the 1 s timeout (generously), not the 30 s budget
        again, why2 = cache.get("cd" * 20, deadline=time.monotonic() + 30)
        assert again is None and why2 == why
        # With the profile's budget already spent, the server is not even asked.
        path, why3 = cache.get("ef" * 20, deadline=time.monotonic())
        assert path is None and "ran out" in why3
    finally:
        stop.set()
        srv.close()
        t.join(5)
        for c in held:
            c.close()
