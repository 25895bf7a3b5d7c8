"""The same names in every output, without a tracer: raw user stacks named through the
symbolizer's seam (:class:`agent.symbolize.ustacks.UserStacks`, the off-CPU fold),
pprof's source records, the symbol table's fast read, and the
recorder's py-spy runs stopped at their second's end. perf's DWARF off-CPU output is
named by the symbolizer in test_stack_names_integration.py, from the real perf."""

from __future__ import annotations

import ctypes
import gzip
import os
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from agent import symbols
from agent.profiling._flight_recorder_python import argv as pyspy_argv
from agent.profiling.offcpu_fold import OffCpuStack, fold, sampler_program
from agent.symbolize.ustacks import UserStacks
from tests.profiling_pure.support import wire_fields
from tracecar_formats.pprof import to_pprof

LIBC_PATHS = ("/usr/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6")


def _libc_address(name: str) -> int:
    fn = getattr(ctypes.CDLL(None), name)
    value = ctypes.cast(fn, ctypes.c_void_p).value
    assert value is not None
    return value


class Fake:
    """Our own seam: the symbolizer's two questions, answered from tables."""

    def __init__(self, names: dict[tuple[bytes, bool], list[bytes]], hidden: bytes | None) -> None:
        self.names = names
        self.hidden = hidden
        self.asked: list[tuple[bytes, bool]] = []
        self.leaf_fixes = 0

    def frames(
        self, pid: bytes, pc: bytes, sym: bytes, mod: bytes, *, caller: bool
    ) -> list[bytes] | None:
        self.asked.append((pc, caller))
        return self.names.get((pc, caller), self.names.get((b"*", caller)))

    def missing_caller(
        self, pid: bytes, leaf: tuple[bytes, bytes], ret: tuple[bytes, bytes]
    ) -> bytes | None:
        return self.hidden

    def report(self) -> list[dict[str, object]]:
        return []


def test_user_stacks_name_a_live_process_and_put_back_the_hidden_caller() -> None:
    pid = os.getpid()
    getpid, close = _libc_address("getpid"), _libc_address("close")
    # The real symbolizer on this very process: libc's functions by their own names.
    names = UserStacks()
    frames = names.frames(pid, (getpid, close + 1))
    assert frames[-1] in ("getpid", "__getpid"), frames
    assert frames[0] in ("close", "__close", "__libc_close"), frames
    assert names.frames(pid, (1,)) == ["[unknown]"]  # outside every mapping
    # Through the seam: root first, return addresses asked as callers, the leaf not, an
    # inlined chain kept whole, and the frameless leaf's caller between them.
    fake = Fake({(b"*", False): [b"outer", b"inlined"], (b"*", True): [b"main"]}, b"verify")
    seam = UserStacks(fake, unknown=lambda pid, a: "jit_fn")  # type: ignore[arg-type]
    assert seam.frames(pid, (getpid, close + 1)) == ["main", "verify", "outer", "inlined"]
    # A library's address is handed over as perf prints it: its file offset.
    libc = next(m for m in symbols.maps(pid) if m.start <= getpid < m.end)

    def off(a: int) -> bytes:
        return f"{a - libc.start + libc.offset:x}".encode()

    # Root first; the return address asked as a caller, the leaf not.
    assert fake.asked == [(off(close + 1), True), (off(getpid), False)]
    assert seam.frames(pid, (1,)) == ["jit_fn"]


def test_off_cpu_fold_names_whole_stacks_once_each() -> None:
    stacks = [
        OffCpuStack(7, "my app", ("__schedule", "schedule"), (0x10, 0x20), 3000),
        OffCpuStack(7, "my app", ("__schedule", "schedule"), (0x10, 0x20), 2000),
        OffCpuStack(8, "other", ("__schedule",), (0x10,), 1000),
    ]
    calls: list[tuple[int, tuple[int, ...]]] = []

    def namer(pid: int, user: tuple[int, ...]) -> list[str]:
        calls.append((pid, user))
        return ["main", "verify", "checksum"][-len(user) - 1 :] if pid == 7 else ["leaf"]

    assert fold(stacks, stack_names=namer) == {
        "my_app;main;verify;checksum;schedule;__schedule": 5,
        "other;leaf;__schedule": 1,
    }
    assert calls == [(7, (0x10, 0x20)), (8, (0x10,))]


def test_pprof_source_records() -> None:
    stacks = {"app;main.main;main.work": 3, "py;<module> (/srv/x.py:1);step (/srv/x.py:7)": 2}
    blob = to_pprof(
        stacks,
        period_ns=10,
        duration_ns=0,
        time_ns=0,
        sources={"main.work": ("/src/work.go", 12), "main.main": ("/src/main.go", 5)},
    )
    fields = wire_fields(gzip.decompress(blob))
    strings = [v for f, _, v in fields if f == 6]
    functions = {}
    for f, _, v in fields:
        if f == 5:
            fn = dict((k, x) for k, _, x in wire_fields(v))  # type: ignore[arg-type]
            functions[fn[1]] = fn
    by_name = {strings[fn[2]]: fn for fn in functions.values()}  # type: ignore[index]
    assert strings[by_name[b"main.work"][4]] == b"/src/work.go"  # type: ignore[index]
    assert by_name[b"main.work"][5] == 12
    assert strings[by_name[b"step"][4]] == b"/srv/x.py" and by_name[b"step"][5] == 7  # type: ignore[index]
    assert 4 not in by_name[b"app"] and 5 not in by_name[b"app"]  # unknown: nothing said
    lines = {}
    for f, _, v in fields:
        if f == 4:
            loc = dict((k, x) for k, _, x in wire_fields(v))  # type: ignore[arg-type]
            line = dict((k, x) for k, _, x in wire_fields(loc[4]))  # type: ignore[arg-type]
            lines[line[1]] = line.get(2, 0)
    work_id = next(i for i, fn in functions.items() if strings[fn[2]] == b"main.work")  # type: ignore[index]
    assert lines[work_id] == 12


def test_symbol_table_fast_read_matches_pyelftools() -> None:
    path = next((p for p in LIBC_PATHS if Path(p).exists()), None)
    assert path is not None
    fast = symbols._load.__wrapped__(path, (0, 0, 0, 0))  # type: ignore[attr-defined]
    slow: set[tuple[str, int, int]] = set()
    with open(path, "rb") as f:
        elf = ELFFile(f)
        for section in elf.iter_sections():
            if isinstance(section, SymbolTableSection):
                for sym in section.iter_symbols():
                    if (
                        sym["st_info"]["type"] == "STT_FUNC"
                        and sym["st_shndx"] != "SHN_UNDEF"
                        and sym["st_value"]
                        and sym.name
                    ):
                        slow.add((sym.name.split("@", 1)[0], sym["st_value"], sym["st_size"]))
    got = {(s.name, s.address, s.size) for s in fast.functions}
    # Every function pyelftools lists, and the GNU IFUNCs it called STT_LOOS besides.
    assert slow <= got and len(got - slow) < 0.2 * len(got)
    assert "memrchr" in {s[0] for s in got - slow}


def test_recorder_seconds_end_on_a_line_of_their_own() -> None:
    text = sampler_program(pid_ns=1, frequency_hz=19, wall_offset_ns=0)
    assert text.index('printf("%d\\n", @sec)') < text.index("print(@s)")
    assert text.index("print(@s)") < text.index('printf("end %d\\n", @sec)')


def test_py_spy_run_stopped_at_its_seconds_end() -> None:
    cmd = pyspy_argv(
        pyspy_path="/venv/bin/py-spy", pid=7, frequency_hz=19, output=Path("/s/7-1.txt"),
        signalled=True,
    )  # fmt: skip
    assert cmd[cmd.index("--rate") + 1] == "19"  # stopped by SIGINT: exactly the rate
    assert cmd[cmd.index("--duration") + 1] == "3"  # py-spy's own bound, should it be missed
