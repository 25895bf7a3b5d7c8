"""The nettrace reader and the IPC framing, on streams recorded from a real .NET Core
3.1.23 runtime (tests/dotnet/data, made by ``python -m tests.dotnet.record_golden``)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

from agent.dotnet import _ipc, _nettrace, _service
from agent.dotnet._model import ProviderSpec, TraceRequest, event_name, resolve
from agent.errors import Invalid
from agent.jobs import JobStore

DATA = Path(__file__).resolve().parent / "data"


def golden(name: str) -> bytes:
    return gzip.decompress((DATA / f"{name}.nettrace.gz").read_bytes())


def counts(summary: _service.TraceSummary) -> dict[tuple[str, str], int]:
    return {(e.provider, e.event): e.count for e in summary.by_event}


def test_counters_stream_events_and_values() -> None:
    data = golden("counters")
    summary = _service.summarize(data)
    assert summary.complete and summary.bytes == len(data)
    assert summary.events == 1294 and summary.event_types == 13 and summary.stacks == 3
    c = counts(summary)
    assert c[("System.Runtime", "EventCounters")] == 38
    assert c[("Microsoft-Windows-DotNETRuntimeRundown", "MethodDCEndVerbose_V1")] == 1044
    trace = _nettrace.parse(data)
    assert trace.info.pointer_size == 8 and trace.info.qpc_frequency == 1_000_000_000
    values = _service.counters_of(trace)
    assert len(values) == 19
    cpu = values["cpu-usage"]
    assert (cpu.display_name, cpu.units, cpu.type, cpu.value) == ("CPU Usage", "%", "Mean", 6.0)
    assert values["exception-count"].type == "Sum" and values["exception-count"].value == 431
    assert values["gen-0-gc-count"].samples == [
        pytest.approx(v) for v in values["gen-0-gc-count"].samples
    ]
    assert len(values["gc-heap-size"].samples) == 2 and values["gc-heap-size"].units == "MB"


def test_exceptions_stream_names_the_runtime_events() -> None:
    c = counts(_service.summarize(golden("exceptions")))
    rt = "Microsoft-Windows-DotNETRuntime"
    thrown = c[(rt, "ExceptionThrown_V1")]
    # each exception: thrown, caught (start and stop), and ExceptionThrownStop
    assert thrown == 242
    assert c[(rt, "ExceptionCatchStart")] == c[(rt, "ExceptionThrownStop")] == thrown


def test_a_cut_stream_keeps_what_came_before() -> None:
    data = golden("exceptions")
    whole = _nettrace.parse(data)
    cut = _nettrace.parse(data[: len(data) // 2])
    assert not cut.complete and 0 < len(cut.events) < len(whole.events)


@pytest.mark.parametrize(
    "data", [b"", b"Nettrace", b"NOTATRACE" * 4, b"Nettrace\x14\0\0\0!FastSerialization.2"]
)
def test_not_a_stream(data: bytes) -> None:
    with pytest.raises(_nettrace.NettraceError):
        _nettrace.parse(data)


def test_ipc_framing() -> None:
    head = _ipc.header(_ipc.COLLECT_TRACING, 12)
    assert head[:14] == b"DOTNET_IPC_V1\0" and struct.unpack("<HBBH", head[14:]) == (32, 2, 2, 0)
    assert _ipc.utf16("ab") == b"\x03\0\0\0a\0b\0\0\0" and _ipc.utf16("") == b"\0\0\0\0"
    payload = _ipc.collect_payload([_ipc.Provider("P", 0x8000, 4, "")], buffer_mb=64, rundown=True)
    assert payload == struct.pack("<IIIQI", 64, 1, 1, 0x8000, 4) + b"\x02\0\0\0P\0\0\0" + b"\0" * 4
    # CollectTracing2 (.NET 5+) carries the rundown flag after the format
    assert _ipc.collect_payload([], buffer_mb=1, rundown=False) == struct.pack(
        "<II?I", 1, 1, False, 0
    )


def test_providers_are_checked_before_the_runtime_sees_them(tmp_path: Path) -> None:
    svc = _service.Service(JobStore(tmp_path, max_storage_bytes=1 << 20))
    got = svc.providers(
        TraceRequest(
            preset="gc",
            providers=[
                ProviderSpec(
                    name="System.Runtime",
                    keywords="0xff",
                    level="verbose",
                    filter="EventCounterIntervalSec=1",
                )
            ],
        )
    )
    assert [(p.name, p.keywords, p.level, p.filter) for p in got] == [
        ("Microsoft-Windows-DotNETRuntime", 0x1, 5, ""),
        ("System.Runtime", 0xFF, 5, "EventCounterIntervalSec=1"),
    ]
    with pytest.raises(Invalid) as e:
        svc.providers(TraceRequest(providers=[ProviderSpec(name="Microsoft-Windows-DotNETRuntme")]))
    assert "unknown provider 'Microsoft-Windows-DotNETRuntme'" in e.value.detail
    assert "cpu-sampling, gc, exceptions" in e.value.detail and '"custom": true' in e.value.detail
    (mine,) = svc.providers(
        TraceRequest(providers=[ProviderSpec(name="MyCompany-App", custom=True)])
    )
    assert mine.name == "MyCompany-App"
    with pytest.raises(Invalid, match="unknown keyword"):
        resolve(ProviderSpec(name="Microsoft-Windows-DotNETRuntime", keywords="gc,nope"), 0)
    assert (
        resolve(ProviderSpec(name="Microsoft-Windows-DotNETRuntime", keywords="gc,exception"), 0)[1]
        == 0x8001
    )
    with pytest.raises(Invalid, match="no providers"):
        svc.providers(TraceRequest())


def test_event_names() -> None:
    rt = "Microsoft-Windows-DotNETRuntime"
    assert event_name(rt, 1, "", 2) == "GCStart_V2"
    assert event_name(rt, 80, "", 1) == "ExceptionThrown_V1"
    assert event_name("Microsoft-Windows-DotNETRuntimeRundown", 144, "", 0) == "MethodDCEndVerbose"
    assert event_name("System.Runtime", 0, "EventCounters") == "EventCounters"
    assert event_name(rt, 9999, "") == "Event9999"


def test_process_info_answer() -> None:
    import uuid

    cookie = uuid.uuid4()
    body = struct.pack("<Q", 42) + cookie.bytes_le
    for text in ("dotnet app.dll", "Linux", "x64"):
        body += _ipc.utf16(text)
    got = _service.parse_process_info(body)
    assert (got.pid, got.runtime_cookie, got.command_line, got.os, got.arch) == (
        42,
        str(cookie),
        "dotnet app.dll",
        "Linux",
        "x64",
    )
