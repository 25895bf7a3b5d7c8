"""Pure parts of the LTTng capability: request validation, the planner, text -> NDJSON.

The babeltrace2 lines in ``data/`` were recorded from real LTTng traces of the
test apps (``--names=all --clock-seconds --no-delta --fields=loglevel``): the C
app's ticks and details with contexts, Python ``logging`` records, a string
with every escape babeltrace2 prints, and LTTng-UST state-dump events (hex
integers, arrays, empty structures).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.lttng._model import EventSpec, SessionRequest
from agent.lttng._plan import plan_session
from agent.lttng._read import _fast, parse_line, to_ndjson

DATA = Path(__file__).resolve().parent / "data"


def lines(name: str) -> str:
    return (DATA / name).read_text()


def test_plain_chunk_fast_path_equals_careful_parser() -> None:
    text = lines("c_and_python.txt")
    fast = _fast(text)
    assert fast is not None
    got = [json.loads(x) for x in fast.splitlines()]
    assert got == [parse_line(x) for x in text.splitlines()]
    first = got[0]
    assert first == {
        "timestamp_ns": 1795654453438873869,
        "loglevel": "TRACE_INFO",
        "loglevel_value": 6,
        "name": "tracecar_test:tick",
        "packet_context": {"cpu_id": 1},
        "context": {"vpid": 15597, "procname": "tcapp"},
        "fields": {"batch": 1, "seq": 0, "msg": "tick-0"},
    }
    py = next(e for e in got if e["name"] == "lttng_python:event")
    assert py["fields"]["logger_name"] == "tracecar.py"
    assert py["fields"]["int_loglevel"] == 20


def test_escapes_decode_to_the_logged_string() -> None:
    text = lines("escapes.txt")
    assert _fast(text) is None  # \a and \x01 are not JSON escapes: careful path
    (ev,) = [json.loads(x) for x in to_ndjson(text).splitlines()]
    assert ev["fields"]["msg"] == (
        'q"uote back\\slash nl\nl tab\tt bell\x07 nul-ish \x01 uni é ☃ name = x, y = "z"'
    )


def test_hex_arrays_and_empty_structs() -> None:
    text = lines("statedump.txt")
    assert _fast(text) is None
    evs = [json.loads(x) for x in to_ndjson(text).splitlines()]
    assert len(evs) == len(text.splitlines())
    assert evs[0]["name"] == "lttng_ust_statedump:start" and evs[0]["fields"] == {}
    info = next(e for e in evs if e["name"] == "lttng_ust_statedump:bin_info")
    assert info["fields"]["baddr"] == 0x7F77B4A1A000
    assert info["fields"]["path"].endswith("ld-linux-x86-64.so.2")
    bid = next(e for e in evs if e["name"] == "lttng_ust_statedump:build_id")
    assert bid["fields"]["_build_id_length"] == len(bid["fields"]["build_id"]) == 20
    assert bid["fields"]["build_id"][:2] == [0x7E, 0xBC]


def test_mixed_chunk_and_unparsable_line_still_emit_json() -> None:
    text = lines("c_and_python.txt") + lines("statedump.txt") + "garbage = = {\n"
    out = [json.loads(x) for x in to_ndjson(text).splitlines()]
    assert len(out) == len(text.splitlines())
    assert out[-1]["raw"] == "garbage = = {"


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"domain": "userspace", "names": ["a b"]}, "names"),
        ({"domain": "userspace", "names": ["--help"]}, "names"),
        ({"domain": "userspace", "names": ["x"], "loglevel": "WARN"}, "userspace log level"),
        ({"domain": "log4j", "names": ["x"], "loglevel": "WARNING"}, "log4j log level"),
        ({"domain": "python", "names": ["x"], "loglevel_only": True}, "needs a loglevel"),
        ({"domain": "python", "names": ["x"], "exclude": ["y"]}, "wildcard"),
        ({"domain": "userspace", "names": ["x"], "filter": "x\x00"}, "filter"),
        ({"domain": "userspace", "names": ["x"], "bogus": 1}, "bogus"),
    ],
)
def test_event_spec_rejects(spec: dict[str, object], words: str) -> None:
    with pytest.raises(ValidationError) as e:
        EventSpec.model_validate(spec)
    assert words in str(e.value)


def test_loglevel_names_are_normalised() -> None:
    assert EventSpec(domain="userspace", names=["a:*"], loglevel="trace_warning").loglevel == (
        "WARNING"
    )
    assert EventSpec(domain="python", names=["a"], loglevel="PYTHON_ERROR").loglevel == "ERROR"
    assert EventSpec(domain="jul", names=["a"], loglevel="fine").loglevel == "FINE"


def test_plan_orders_commands_and_keeps_filters_whole() -> None:
    req = SessionRequest.model_validate(
        {
            "events": [
                {
                    "domain": "userspace",
                    "names": ["app:*"],
                    "filter": 'a == "x; rm -rf /"',
                    "exclude": ["app:noisy"],
                    "loglevel": "INFO",
                },
                {
                    "domain": "python",
                    "names": ["my.logger"],
                    "loglevel": "WARNING",
                    "loglevel_only": True,
                },
            ],
            "contexts": ["vpid", "procname", "vpid"],
            "pids": [12, 13],
            "mode": "snapshot",
            "subbuf_size": 8192,
            "num_subbuf": 4,
            "start": True,
        }
    )
    steps = plan_session(req, session="tracecar-x-0123", output=Path("/d/trace"))
    args = [s["args"] for s in steps]
    assert args == [
        ["create", "tracecar-x-0123", "--output=/d/trace", "--snapshot"],
        [
            "enable-channel",
            "-u",
            "tracecar",
            "-s",
            "tracecar-x-0123",
            "--subbuf-size=8192",
            "--num-subbuf=4",
        ],
        [
            "enable-event",
            "-u",
            "app:*",
            "-s",
            "tracecar-x-0123",
            "-c",
            "tracecar",
            "--loglevel=INFO",
            "--filter",
            'a == "x; rm -rf /"',
            "--exclude=app:noisy",
        ],
        ["enable-event", "-p", "my.logger", "-s", "tracecar-x-0123", "--loglevel-only=WARNING"],
        ["add-context", "-u", "-s", "tracecar-x-0123", "-t", "vpid", "-t", "procname"],
        ["track", "-u", "-s", "tracecar-x-0123", "--vpid=12,13"],
        ["start", "tracecar-x-0123"],
    ]


def test_request_bounds() -> None:
    with pytest.raises(ValidationError, match="power of two"):
        SessionRequest.model_validate({"events": [{"domain": "userspace"}], "num_subbuf": 3})
    with pytest.raises(ValidationError, match="name"):
        SessionRequest.model_validate({"name": "../x", "events": [{"domain": "userspace"}]})
    with pytest.raises(ValidationError, match="mode"):
        SessionRequest.model_validate({"events": [{"domain": "userspace"}], "mode": "fast"})


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_failing_read_ends_with_an_error_record(tmp_path: Path, fmt: str) -> None:
    # A CTF trace whose metadata is garbage: the real babeltrace2 refuses it. The events
    # endpoint has already answered 200 by then, so the failure must travel in-band.
    import asyncio

    from agent.lttng._read import stream_events

    (tmp_path / "metadata").write_text("/* CTF 1.8 */ this is not TSDL {\n")

    async def read() -> bytes:
        return b"".join([c async for c in stream_events(tmp_path, fmt=fmt)])  # type: ignore[arg-type]

    out = asyncio.run(read()).decode()
    last = out.splitlines()[-1]
    if fmt == "json":
        assert json.loads(last)["error"].startswith("babeltrace2 failed: "), last
    else:
        assert last.startswith("# error: babeltrace2 failed: "), last
