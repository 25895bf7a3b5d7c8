"""Pure parts of USDT probes: request validation, the bpftrace programs for a USDT point and
for a Python function (entry/return paired per thread and depth), the parser of their
output (lines recorded from bpftrace 0.17 on this platform), and closing-probe lookup."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.probes import _bpftrace
from agent.probes._model import ProbeRequest
from agent.probes._plan import Hit, Spec
from agent.probes._usdt import _closing_probe
from agent.symbols import ObjectSymbols, Symbol, object_symbols

ROOT = "/proc/7/root/usr/bin/python3.11"
PY = Spec(
    pid=7,
    binary="/usr/bin/python3.11",
    host_binary=ROOT,
    function="python:function__entry",
    address=0x4F20A1,
    mode="events",
    of="latency",
    args=(),
    retval=False,
    retval_type="int",
    stack=False,
    duration_s=2.0,
    max_events=100,
    usdt="python:function__entry",
    usdt_return="python:function__return",
    usdt_enable=("python:line",),
    python_function="slow",
    python_file="app.py",
)
GC = replace(
    PY,
    function="python:gc__start",
    usdt="python:gc__start",
    usdt_return=None,
    usdt_enable=(),
    python_function=None,
    python_file=None,
    args=("int32",),
)


# --- validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "usdt",
    ["python", "python:", ":x", 'a:b"', "a:b;c", "a:b c", "a:b:c", "1a:b", "a:b\n", "a" * 65 + ":"],
)
def test_usdt_names_outside_the_pattern_are_refused(usdt: str) -> None:
    with pytest.raises(ValidationError, match="usdt"):
        ProbeRequest(pid=1, usdt=usdt)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("python_function", 'a"b'),
        ("python_function", "a b"),
        ("python_function", "a.b"),
        ("python_function", "<script>"),
        ("python_function", "a" * 129),
        ("python_file", 'x"y'),
        ("python_file", "a b"),
        ("python_file", "a:b"),
        ("python_file", "a\\b"),
        ("python_file", ""),
    ],
)
def test_python_names_outside_the_pattern_are_refused(field: str, value: str) -> None:
    body = {"python_function": "f", field: value}
    with pytest.raises(ValidationError, match=field):
        ProbeRequest(pid=1, **body)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["slow", "_private", "<module>", "<lambda>", "f2"])
def test_python_function_names_accepted(name: str) -> None:
    assert ProbeRequest(pid=1, python_function=name).python_function == name


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"usdt": "a:b", "function": "f"}, "one of"),
        ({"python_file": "app.py", "function": "f"}, "python_file"),
        ({"usdt": "a:b", "retval": True}, "return value"),
        ({"usdt": "a:b", "mode": "histogram", "of": "retval"}, "retval"),
        ({"python_function": "f", "args": ["int"]}, "args"),
        ({"python_function": "f", "stack": True}, "/stack"),
        ({"python_function": "f", "mode": "histogram", "of": "arg0"}, "latency"),
    ],
)
def test_usdt_combinations_refused(body: dict[str, object], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        ProbeRequest(pid=1, **body)  # type: ignore[arg-type]


# --- programs ----------------------------------------------------------------------


def test_python_events_pair_entry_and_return_per_thread_and_depth() -> None:
    text = _bpftrace.program(PY)
    pred = 'str(arg1) == "slow" && strcontains(str(arg0), "app.py")'
    assert f"usdt:{ROOT}:python:line {{ }}" in text
    assert f"usdt:{ROOT}:python:function__entry /{pred}/ {{" in text
    assert f"usdt:{ROOT}:python:function__return /{pred} && @__d[tid] > 0/ {{" in text
    assert "@__t[tid, @__d[tid]] = nsecs;" in text
    assert "$lat = nsecs - @__t[tid, $d];" in text
    assert "@__d[tid] = $d - 1;" in text
    assert 'printf("S\\t%d\\t1\\t%s\\n", tid, str(arg1));' in text
    assert "clear(@__d); clear(@__t); clear(@__l);" in text


def test_python_count_needs_only_the_return_probe() -> None:
    text = _bpftrace.program(replace(PY, mode="count", usdt_enable=(), python_file=None))
    assert "function__entry" not in text and "python:line" not in text
    assert f'usdt:{ROOT}:python:function__return /str(arg1) == "slow"/ {{' in text
    assert "@__hits = count();" in text


def test_python_latency_histogram() -> None:
    text = _bpftrace.program(replace(PY, mode="histogram"))
    assert "@__hist = hist($lat);" in text
    assert "if (@__n >= 100) { exit(); }" in text


def test_usdt_point_with_arguments() -> None:
    text = _bpftrace.program(GC)
    assert f"usdt:{ROOT}:python:gc__start {{" in text
    assert 'printf("E\\t%d\\t%d\\t%llu\\t%d\\n", pid, tid, nsecs, (int32)arg0);' in text
    hist = _bpftrace.program(replace(GC, mode="histogram", of="arg0"))
    assert "@__hist = hist((int32)arg0);" in hist


def test_usdt_pair_latency() -> None:
    spec = replace(GC, mode="histogram", usdt_return="python:gc__done")
    text = _bpftrace.program(spec)
    assert f"usdt:{ROOT}:python:gc__done /@__d[tid] > 0/ {{" in text
    assert "@__hist = hist($lat);" in text


def test_python_programs_read_long_strings() -> None:
    assert _bpftrace.env(PY)["BPFTRACE_STRLEN"] == "200"
    assert "BPFTRACE_STRLEN" not in _bpftrace.env(GC)


# --- parsing -----------------------------------------------------------------------


def test_python_events_parse_with_function_file_line_latency() -> None:
    p = _bpftrace.Parser(PY)
    lines = [
        {"type": "printf", "data": "S\t21927\t0\t/var/tmp/usdtx/app4.py\n"},
        {"type": "printf", "data": "S\t21927\t1\trec\n"},
        {"type": "printf", "data": "E\t21927\t21927\t1118948174806\t4\t5\t42134\n"},
    ]
    items = [p.feed(json.dumps(ln).encode()) for ln in lines]
    assert items[:2] == [None, None]
    hit = items[2]
    assert isinstance(hit, Hit)
    ev = hit.event
    assert ev["function"] == "rec" and ev["file"] == "/var/tmp/usdtx/app4.py"
    assert (ev["line"], ev["return_line"], ev["latency_ns"]) == (4, 5, 42134)
    assert ev["pid"] == 7 and ev["tid"] == 7


def test_closing_probes() -> None:
    def sym(name: str) -> Symbol:
        return Symbol(name, 1, 0, "usdt")

    syms = ObjectSymbols(
        (),
        tuple(map(sym, ["p:function__entry", "p:function__return", "p:gc__start", "p:gc__done"])),
        (),
    )
    assert _closing_probe(syms, "p:function__entry") == "p:function__return"
    assert _closing_probe(syms, "p:gc__start") == "p:gc__done"
    assert _closing_probe(syms, "p:gc__done") is None
    assert _closing_probe(syms, "p:lone__entry") is None


def test_stapsdt_notes_carry_arguments_and_semaphores() -> None:
    syms = object_symbols(Path("/usr/bin/python3.11"))  # Debian's, built --with-dtrace
    entry = syms.probe("python:function__entry")
    assert entry is not None
    assert entry.args == ("8@%rbp", "8@%r12", "-4@%eax")
    assert entry.semaphore != 0
    assert _closing_probe(syms, "python:function__entry") == "python:function__return"
