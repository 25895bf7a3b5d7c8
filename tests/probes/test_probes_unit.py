"""Pure parts of the probes: request validation, program and command planning, parsers of
real tracer output (lines recorded from bpftrace 0.17 and perf 6.1 on this platform), the
perf pipe framer, and the bounded event stream."""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import replace

import pytest
from pydantic import ValidationError

from agent.probes import _bpftrace, _perfprobe
from agent.probes._model import ProbeRequest
from agent.probes._plan import Buckets, Counts, Hit, Pow2Histogram, Spec
from agent.probes._stream import EventStream

SPEC = Spec(
    pid=2,
    binary="/srv/w",
    host_binary="/proc/2/root/srv/w",
    function="add",
    address=0x1200,
    mode="events",
    of="latency",
    args=("int", "int"),
    retval=True,
    retval_type="int",
    stack=False,
    duration_s=2.5,
    max_events=100,
)


# --- validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "function",
    ['a"b', "a;b", "a{b}", "a\nb", "add\n", "a b", "1abc", "a:b", "add+12", "0xZZ", "", "a" * 300],
)
def test_functions_outside_the_pattern_are_refused(function: str) -> None:
    with pytest.raises(ValidationError, match="function"):
        ProbeRequest(pid=1, function=function)


@pytest.mark.parametrize("function", ["add", "_Z3fooi", "add+0x10", "0x1200", "malloc"])
def test_functions_in_the_pattern_are_accepted(function: str) -> None:
    assert ProbeRequest(pid=1, function=function).function == function


@pytest.mark.parametrize(
    "binary", ["/srv/../etc/passwd", "/a b", "/a:b", 'lib"c', "relative/path", "/x\n"]
)
def test_binaries_outside_the_pattern_are_refused(binary: str) -> None:
    with pytest.raises(ValidationError, match="binary"):
        ProbeRequest(pid=1, function="f", binary=binary)


def test_target_and_combinations() -> None:
    with pytest.raises(ValidationError, match="target"):
        ProbeRequest(function="f")
    with pytest.raises(ValidationError, match="not both"):
        ProbeRequest(pid=1, container="c", process="p", function="f")
    with pytest.raises(ValidationError, match="string"):
        ProbeRequest(pid=1, function="f", mode="histogram", of="arg0", args=["str"])
    assert ProbeRequest(container="app", process="workload", function="f").pid is None


# --- planning ----------------------------------------------------------------------


def test_events_program_pairs_entry_and_return_per_thread() -> None:
    text = _bpftrace.program(SPEC)
    assert "uprobe:/proc/2/root/srv/w:add {" in text
    assert "uretprobe:/proc/2/root/srv/w:add /@__t[tid]/ {" in text
    assert "@__a0[tid] = (int64)arg0;" in text
    assert "nsecs - @__t[tid]" in text
    assert "interval:ms:2500 { exit(); }" in text
    assert 'BEGIN { printf("R\\n"); }' in text


def test_string_arguments_travel_on_their_own_records() -> None:
    spec = replace(SPEC, args=("str", "int"), retval=False)
    text = _bpftrace.program(spec)
    assert 'printf("S\\t%d\\t0\\t%s\\n", tid, str(arg0));' in text
    assert "uretprobe" not in text


@pytest.mark.parametrize(
    ("of", "needle"),
    [
        ("latency", "@__hist = hist(nsecs - @__t[tid]);"),
        ("retval", "@__hist = hist((int64)retval);"),
        ("arg1", "@__hist = hist((int64)arg1);"),
    ],
)
def test_histogram_programs(of: str, needle: str) -> None:
    text = _bpftrace.program(replace(SPEC, mode="histogram", of=of))
    assert needle in text
    assert "if (@__n >= 100) { exit(); }" in text


def test_perf_plan_uses_target_ns_registers_and_our_group() -> None:
    p = _perfprobe.plan(SPEC, group="tracecar_x", probe_id="abcd1234", control_dir="/tmp/c")
    assert p.add[0] == [
        "perf",
        "probe",
        "-q",
        "--target-ns=2",
        "-x",
        "/srv/w",
        "-a",
        "tracecar_x:pabcd1234e=add a0=%di:s64 a1=%si:s64",
    ]
    assert p.add[1][-1] == "tracecar_x:pabcd1234r=add%return ret=$retval:s64"
    assert p.return_event == "pabcd1234r__return"
    assert p.delete == ["perf", "probe", "-q", "-d", "tracecar_x:pabcd1234*"]
    assert "fifo:/tmp/c/ctl,/tmp/c/ack" in p.record


@pytest.mark.parametrize(
    ("instance", "group"),
    [
        ("podsim1234", "tracecar_podsim1234"),
        ("Pod-UID.x", "tracecar_pod_uid_x"),
    ],
)
def test_group_names(instance: str, group: str) -> None:
    assert _perfprobe.group_name(instance) == group


def test_long_instance_ids_are_hashed() -> None:
    g = _perfprobe.group_name("0b7c9d6e-1f2a-4b3c-8d9e-0123456789ab")
    assert g.startswith("tracecar_") and len(g) == len("tracecar_") + 12


# --- parsing real output -----------------------------------------------------------

BPFTRACE_LINES = [
    b'{"type": "attached_probes", "data": {"probes": 5}}',
    b'{"type": "printf", "data": "R\\n"}',
    b'{"type": "printf", "data": "E\\t13368\\t13368\\t2813157428085\\t1\\t-7\\t-4\\t21295\\n"}',
    b'{"type": "printf", "data": "S\\t13368\\t0\\the\\"l\\tlo\\u001f\\n"}',
    b'{"type": "map", "data": {"@__hits": 5}}',
    b'{"type": "hist", "data": {"@__hist": [{"max": -1, "count": 3}, {"min": 0, "max": 0, '
    b'"count": 0}, {"min": 2, "max": 3, "count": 1}, {"min": 4, "max": 7, "count": 1}]}}',
    b'{"type": "lost_events", "data": {"events": 7}}',
    b'{"type": "printf", "data": "X\\n"}',
    b'{"type": "map", "data": {"@__hits": 0}}',
]


def test_bpftrace_parser() -> None:
    parser = _bpftrace.Parser(SPEC)
    items = [parser.feed(line) for line in BPFTRACE_LINES]
    assert items[0] is None  # our own BEGIN record says "attached", not this one
    hit = items[2]
    assert isinstance(hit, Hit)
    assert hit.event["pid"] == 2 and hit.event["tid"] == 2  # the main thread is the process
    assert (hit.event["arg0"], hit.event["arg1"], hit.event["retval"]) == (1, -7, -4)
    assert hit.event["latency_ns"] == 21295
    assert isinstance(items[4], Counts) and items[4].hits == 5
    assert isinstance(items[5], Buckets) and items[5].buckets[0] == {
        "min": None,
        "max": -1,
        "count": 3,
    }
    assert items[-1] is None  # bpftrace's exit dump of cleared maps is ignored


def test_bpftrace_string_record_keeps_tabs_and_quotes() -> None:
    spec = replace(SPEC, args=("str", "int"), retval=False)
    parser = _bpftrace.Parser(spec)
    s = json.dumps({"type": "printf", "data": 'S\t77\t0\the"l\tlo\x1f {x;}\n'}).encode()
    e = json.dumps({"type": "printf", "data": "E\t70\t77\t5\t2\n"}).encode()
    assert parser.feed(s) is None
    hit = parser.feed(e)
    assert isinstance(hit, Hit)
    assert hit.event["arg0"] == 'he"l\tlo\x1f {x;}' and hit.event["arg1"] == 2
    assert hit.event["tid"] == 77  # another thread keeps the node's id


PERF_LINES = [
    "     5/5      2138.539554196:         tracecar_x:pabcd1234e: (563540ec5200) a0=0 a1=-7",
    "     5/5      2138.539864902: tracecar_x:pabcd1234r__return: (563540ec5200 <- 563540ec50d3)"
    " ret=-7",
]


def test_perf_parser_pairs_entry_and_return() -> None:
    p = _perfprobe.plan(SPEC, group="tracecar_x", probe_id="abcd1234", control_dir="/tmp/c")
    parser = _perfprobe.Parser(SPEC, p)
    assert parser.feed(PERF_LINES[0]) is None
    hit = parser.feed(PERF_LINES[1])
    assert isinstance(hit, Hit)
    assert (hit.event["arg0"], hit.event["arg1"], hit.event["retval"]) == (0, -7, -7)
    assert hit.event["latency_ns"] == 539864902 - 539554196
    assert (hit.event["pid"], hit.event["tid"]) == (5, 5)


def test_perf_parser_strings() -> None:
    spec = replace(SPEC, args=("str", "int"), retval=False)
    p = _perfprobe.plan(spec, group="tracecar_x", probe_id="abcd1234", control_dir="/tmp/c")
    parser = _perfprobe.Parser(spec, p)
    line = '  5/5  2138.539931130:  tracecar_x:pabcd1234e: (563540ec5220) a0="he"l\tlo" a1=2'
    hit = parser.feed(line)
    assert isinstance(hit, Hit) and hit.event["arg0"] == 'he"l\tlo' and hit.event["arg1"] == 2


def test_pow2_histogram_matches_bpftrace_buckets() -> None:
    h = Pow2Histogram()
    for v in (-5, -1, -2, 2, 5):
        h.add(v)
    assert h.buckets() == [
        {"min": None, "max": -1, "count": 3},
        {"min": 2, "max": 3, "count": 1},
        {"min": 4, "max": 7, "count": 1},
    ]


def _record(rtype: int, body: bytes) -> bytes:
    return struct.pack("<IHH", rtype, 0, 8 + len(body)) + body


def test_pipe_framer_adds_rounds_only_between_whole_records() -> None:
    header = b"PERFILE2" + struct.pack("<Q", 16)
    tracing = struct.pack("<IHHI", 66, 0, 12, 5) + b"abcde"
    data = header + _record(9, b"x" * 16) + tracing + _record(9, b"y" * 8)
    framer = _perfprobe.PipeFramer()
    out = b"".join(framer.feed(data[i : i + 7]) for i in range(0, len(data), 7))
    rounds = out.count(struct.pack("<IHH", 68, 0, 8))
    assert rounds >= 2 and rounds % 2 == 0
    assert out.replace(struct.pack("<IHH", 68, 0, 8), b"") == data


# --- the bounded stream --------------------------------------------------------------


def test_stream_rate_limit_counts_drops_and_buffer_is_bounded() -> None:
    async def go() -> None:
        s = EventStream(capacity=5, rate=8)
        kept = [s.publish({"n": i}) for i in range(20)]
        assert kept.count(True) == 8 and s.drops == 12
        s.close()
        batches = [b async for b in s.read()]
        got = [e["n"] for b in batches for e in b.events]
        assert got == [3, 4, 5, 6, 7]  # only the last `capacity` are retained
        assert batches[-1].closed

    asyncio.run(go())


def test_a_slow_reader_is_told_what_it_missed() -> None:
    async def go() -> None:
        s = EventStream(capacity=5, rate=1000)
        s.publish({"n": 0})
        reader = s.read()
        first = await reader.__anext__()
        assert [e["n"] for e in first.events] == [0]
        for i in range(1, 11):
            s.publish({"n": i})
        nxt = await reader.__anext__()
        assert nxt.missed == 5 and [e["n"] for e in nxt.events] == [6, 7, 8, 9, 10]
        await reader.aclose()
        assert s.readers == 0

    asyncio.run(go())


def test_stream_readers_wake_and_leave() -> None:
    async def go() -> None:
        s = EventStream(capacity=100, rate=1000)
        seen: list[int] = []

        async def reader() -> None:
            async for b in s.read():
                seen.extend(e["n"] for e in b.events)
                if b.closed:
                    return

        task = asyncio.create_task(reader())
        await asyncio.sleep(0.01)
        assert s.readers == 1
        for i in range(3):
            s.publish({"n": i})
            await asyncio.sleep(0)
        s.close()
        await asyncio.wait_for(task, 2)
        assert seen == [0, 1, 2] and s.readers == 0

    asyncio.run(go())
