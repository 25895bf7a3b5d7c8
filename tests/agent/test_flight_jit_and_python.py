"""The recorder's JIT names (perf maps read through our procfs seam, faked with real
files) and its one-second py-spy run's command line."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import pytest

from agent import procfs
from agent.profiling import _jitnames
from agent.profiling._flight_recorder_python import argv
from agent.profiling._jitnames import JitNames, parse

NODE_MAP = b"""7f0000001000 40 LazyCompile:*fib /app/fib.js:1
7f0000002000 80 LazyCompile:~handler /app/server.js:10
0x7f0000003000 0x20 Interpreter
7f0000002000 80 LazyCompile:*handler /app/server.js:10
bad line
"""


def test_perf_map_lines_later_ones_win() -> None:
    starts, ends, names = parse(NODE_MAP)
    assert starts == [0x7F0000001000, 0x7F0000002000, 0x7F0000003000]
    assert ends[0] == 0x7F0000001040
    assert names[1] == "LazyCompile:*handler /app/server.js:10"  # recompiled: the newer


def test_unknown_frames_are_named_from_the_map_and_reread_when_it_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "perf-42.map"
    path.write_bytes(NODE_MAP)
    clock = [100.0]

    def open_map(pid: int) -> BinaryIO:
        assert pid == 42
        return path.open("rb")

    monkeypatch.setattr(procfs, "open_perf_map", open_map)
    jit = JitNames(clock=lambda: clock[0])
    addrs = [0x7F0000001010, 0x401000, 0x7F0000009000]
    names = ["[unknown]", "main", "[unknown]"]
    assert jit.resolve(42, addrs, names) == ["LazyCompile:*fib /app/fib.js:1", "main", "[unknown]"]
    with path.open("ab") as f:
        f.write(b"7f0000009000 10 LazyCompile:*late /app/late.js:3\n")
    assert jit.resolve(42, addrs, names)[2] == "[unknown]"  # read at most every 2 s
    clock[0] += _jitnames.RELOAD_EVERY_S
    assert jit.resolve(42, addrs, names)[2] == "LazyCompile:*late /app/late.js:3"
    assert jit.resolve(7, [1], ["main"]) == ["main"]  # nothing unknown: no map read
    jit.forget_except(set())
    assert jit._maps == {}


def test_a_process_without_a_map_keeps_its_unknown_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_map(pid: int) -> BinaryIO:
        raise FileNotFoundError("no perf map")

    monkeypatch.setattr(procfs, "open_perf_map", no_map)
    assert JitNames().resolve(5, [1], ["[unknown]"]) == ["[unknown]"]


def test_one_second_of_py_spy() -> None:
    cmd = argv(pyspy_path="/venv/bin/py-spy", pid=7, frequency_hz=19, output=Path("/s/7-1.txt"))
    assert cmd == [
        "/venv/bin/py-spy", "record", "--pid", "7", "--duration", "1",
        "--rate", "20",  # --duration 1 keeps rate - 1 samples: 19 a second, as asked
        "--nonblocking", "--function", "--full-filenames",
        "--format", "raw", "--output", "/s/7-1.txt",
    ]  # fmt: skip
