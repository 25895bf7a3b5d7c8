"""The diagnostics client's failures, as the agent answers them: a fake runtime of our
own (a Unix socket server speaking the IPC framing) under a fake /proc/PID/root."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import procfs
from agent.dotnet import _ipc, _service
from agent.errors import Conflict


def info(version: str | None = "3.1.23") -> procfs.ProcessInfo:
    return procfs.ProcessInfo(
        pid=4242, ppid=1, comm="dotnet", cmdline=["dotnet", "app.dll"], exe="/usr/bin/dotnet",
        uid=0, user="root", mnt_ns=1, container="app", container_id=None, runtime="dotnet",
        runtime_version=version, state="S", threads=9, cpu_percent=0.0, cpu_time_s=0.0,
        rss_bytes=0, start_time_s=0.0, perf_map=False,
    )  # fmt: skip


@pytest.fixture
def fake_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """socket_path() looks in /proc/PID/root/tmp: point it at a folder of ours."""
    real = _ipc.Path

    def fake_path(p: str) -> Path:
        return tmp_path if p == "/proc/4242/root/tmp" else real(p)

    monkeypatch.setattr(_ipc, "Path", fake_path)
    yield tmp_path


async def serve_once(path: Path, answer: bytes) -> asyncio.AbstractServer:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = await r.readexactly(_ipc.HEADER_SIZE)
        size = struct.unpack_from("<H", head, 14)[0]
        await r.readexactly(size - _ipc.HEADER_SIZE)
        w.write(answer)
        await w.drain()
        w.close()

    return await asyncio.start_unix_server(handle, str(path))


def error_answer(hresult: int) -> bytes:
    return _ipc.MAGIC + struct.pack("<HBBHI", 24, 0xFF, 0xFF, 0, hresult)


async def mapped(coro_factory: object) -> Conflict:
    with pytest.raises(Conflict) as e:
        async with _service.ipc_errors(info()):
            await coro_factory()  # type: ignore[operator]
    return e.value


def test_no_socket(fake_tmp: Path) -> None:
    err = asyncio.run(mapped(lambda: _ipc.call(4242, _ipc.PROCESS_INFO)))
    assert "has no diagnostics socket" in err.detail and "EnableDiagnostics=0" in err.detail


def test_socket_left_behind(fake_tmp: Path) -> None:
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(str(fake_tmp / "dotnet-diagnostic-4242-1-socket"))
    s.close()
    err = asyncio.run(mapped(lambda: _ipc.call(4242, _ipc.PROCESS_INFO)))
    assert "its diagnostics socket is gone" in err.detail


def test_unknown_command_names_the_minimum_version(fake_tmp: Path) -> None:
    async def go() -> Conflict:
        path = fake_tmp / "dotnet-diagnostic-4242-7-socket"
        server = await serve_once(path, error_answer(_ipc.E_UNKNOWN_COMMAND))
        async with server:
            return await mapped(lambda: _ipc.call(4242, _ipc.PROCESS_INFO))

    err = asyncio.run(go())
    assert err.extra["minimum_version"] == "5.0"
    assert "ProcessInfo needs .NET 5.0 or later; pid 4242 (dotnet, .NET 3.1.23)" in err.detail


def test_other_errors_and_a_closed_connection(fake_tmp: Path) -> None:
    async def go(answer: bytes) -> Conflict:
        path = fake_tmp / "dotnet-diagnostic-4242-7-socket"
        path.unlink(missing_ok=True)
        server = await serve_once(path, answer)
        async with server:
            return await mapped(lambda: _ipc.call(4242, _ipc.COLLECT_TRACING))

    bad = asyncio.run(go(error_answer(_ipc.E_BAD_ENCODING)))
    assert "HRESULT 0x80131384" in bad.detail and "minimum_version" not in bad.extra
    cut = asyncio.run(go(b""))
    assert "closed the connection" in cut.detail
    junk = asyncio.run(go(b"HTTP/1.1 400 Bad Request\r\n\r\n"))
    assert "not a diagnostics answer" in junk.detail


def test_not_dotnet(monkeypatch: pytest.MonkeyPatch) -> None:
    py = info().model_copy(
        update={"runtime": "python", "runtime_version": "3.12", "comm": "gunicorn"}
    )
    monkeypatch.setattr(procfs, "process_info", lambda pid: py)
    with pytest.raises(Conflict) as e:
        _service.require_dotnet(4242)
    assert "its runtime is python 3.12" in e.value.detail and e.value.extra["runtime"] == "python"
