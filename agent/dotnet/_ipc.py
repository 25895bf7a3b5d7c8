"""The .NET diagnostics IPC protocol (what dotnet-trace, dotnet-counters, dotnet-dump
and dotnet-monitor speak), in Python: no .NET tooling in the agent.

This module owns the runtime's diagnostics socket: finding it, framing commands,
reading answers, and the EventPipe session (CollectTracing / StopTracing).

The runtime listens on ``$TMPDIR/dotnet-diagnostic-PID-KEY-socket`` in its own
/tmp (mode 0600, its user's); the agent reaches it through ``/proc/PID/root``.
Every message is a 20-byte header (``DOTNET_IPC_V1\\0``, ``uint16`` total size,
``uint8`` command set, ``uint8`` command id, ``uint16`` reserved) and a payload.
The server answers on the same connection: command set 0xFF, id 0x00 (OK, then
the command's answer) or 0xFF (error, then a ``uint32`` HRESULT). After an OK to
CollectTracing the connection carries the session's nettrace stream until the
session stops (StopTracing on another connection, or the runtime exits).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"DOTNET_IPC_V1\0"
_HEADER = struct.Struct("<14sHBBH")
HEADER_SIZE = _HEADER.size  # 20

SERVER = 0xFF
OK, ERROR = 0x00, 0xFF

# HRESULTs the runtime answers (ds-protocol.h). Seen on 3.1.23: ProcessInfo answers
# UNKNOWN_COMMAND; a known command with a payload it cannot read, BAD_ENCODING.
E_BAD_ENCODING = 0x80131384
E_UNKNOWN_COMMAND = 0x80131385
E_UNKNOWN_MAGIC = 0x80131386
E_NOT_SUPPORTED = 0x80131515


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    command_set: int
    command_id: int
    since: str
    """The first runtime version that answers it (docs: diagnostics-client-library)."""


STOP_TRACING = Command("StopTracing", 0x02, 0x01, "3.0")
COLLECT_TRACING = Command("CollectTracing", 0x02, 0x02, "3.0")
# Documented as .NET 5; 3.1.23 answers it too (seen: rundown off honoured).
COLLECT_TRACING2 = Command("CollectTracing2 (rundown off)", 0x02, 0x03, "5.0")
GENERATE_CORE_DUMP = Command("GenerateCoreDump", 0x01, 0x01, "3.1")
PROCESS_INFO = Command("ProcessInfo", 0x04, 0x00, "5.0")
PROCESS_ENVIRONMENT = Command("ProcessEnvironment", 0x04, 0x02, "5.0")


class IpcError(Exception):
    """The diagnostics socket could not be reached or spoke out of turn."""


class SocketMissing(IpcError):
    """No socket: the runtime has diagnostics off, or is not (or no longer) running."""


class SocketGone(IpcError):
    """A socket file with no listener: the runtime exited (or crashed) and left it."""


class CommandError(IpcError):
    """The runtime answered an error HRESULT."""

    def __init__(self, command: Command, hresult: int) -> None:
        super().__init__(f"{command.name} answered HRESULT 0x{hresult:08X}")
        self.command = command
        self.hresult = hresult

    @property
    def unsupported(self) -> bool:
        return self.hresult in (E_UNKNOWN_COMMAND, E_NOT_SUPPORTED)


def socket_path(pid: int) -> Path:
    """The newest diagnostics socket of ``pid`` in its own /tmp, seen from here."""
    tmp = Path(f"/proc/{pid}/root/tmp")
    try:
        found = [p for p in tmp.glob(f"dotnet-diagnostic-{pid}-*-socket") if p.name.count("-") == 4]
    except OSError as e:
        raise SocketMissing(f"cannot look in /proc/{pid}/root/tmp: {e.strerror}") from e
    if not found:
        raise SocketMissing(f"no /tmp/dotnet-diagnostic-{pid}-*-socket in the process's /tmp")

    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    return max(found, key=mtime)


def header(command: Command, payload_size: int) -> bytes:
    return _HEADER.pack(
        MAGIC, HEADER_SIZE + payload_size, command.command_set, command.command_id, 0
    )


def utf16(text: str | None) -> bytes:
    """A protocol string: ``uint32`` length in UTF-16 units (with the NUL), then them."""
    if not text:
        return struct.pack("<I", 0)
    raw = (text + "\0").encode("utf-16-le")
    return struct.pack("<I", len(raw) // 2) + raw


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    keywords: int
    level: int
    filter: str = ""


def collect_payload(providers: Sequence[Provider], *, buffer_mb: int, rundown: bool) -> bytes:
    """CollectTracing's (and CollectTracing2's) payload: buffer size, format 1
    (nettrace), [rundown,] then each provider's keywords, level, name, filter."""
    out = struct.pack("<II", buffer_mb, 1)
    if not rundown:
        out += struct.pack("<?", False)
    out += struct.pack("<I", len(providers))
    for p in providers:
        out += struct.pack("<QI", p.keywords, p.level) + utf16(p.name) + utf16(p.filter)
    return out


class Connection:
    """One connection to a runtime's diagnostics server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, pid: int, *, timeout: float = 5.0) -> Connection:
        path = socket_path(pid)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(path), limit=1 << 20), timeout
            )
        except (ConnectionRefusedError, FileNotFoundError) as e:
            raise SocketGone(
                f"{path.name} is left in the process's /tmp but nothing listens on it "
                f"({e.strerror}): the runtime is gone"
            ) from e
        except (OSError, TimeoutError) as e:
            raise IpcError(f"cannot connect to {path.name}: {e}") from e
        return cls(reader, writer)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError, asyncio.TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 2)

    async def send(self, command: Command, payload: bytes = b"") -> None:
        self.writer.write(header(command, len(payload)) + payload)
        try:
            await self.writer.drain()
        except OSError as e:
            raise SocketGone(f"the runtime closed its diagnostics socket: {e}") from e

    async def answer(self, command: Command, *, timeout: float = 10.0) -> bytes:
        """The OK answer's payload; :class:`CommandError` for an error answer."""
        try:
            raw = await asyncio.wait_for(self.reader.readexactly(HEADER_SIZE), timeout)
            magic, size, cset, cid, _ = _HEADER.unpack(raw)
            if magic != MAGIC or cset != SERVER or size < HEADER_SIZE:
                raise IpcError(f"{command.name}: not a diagnostics answer ({raw[:14]!r})")
            body = await asyncio.wait_for(self.reader.readexactly(size - HEADER_SIZE), timeout)
        except asyncio.IncompleteReadError as e:
            raise SocketGone(f"{command.name}: the runtime closed the connection") from e
        except TimeoutError as e:
            raise IpcError(f"{command.name}: no answer within {timeout:g} s") from e
        except OSError as e:
            raise SocketGone(f"{command.name}: {e}") from e
        if cid == ERROR:
            hresult = struct.unpack("<I", body[:4])[0] if len(body) >= 4 else 0
            raise CommandError(command, hresult)
        return body


async def call(pid: int, command: Command, payload: bytes = b"", *, timeout: float = 10.0) -> bytes:
    """One command, one answer, on a connection of its own."""
    conn = await Connection.open(pid)
    try:
        await conn.send(command, payload)
        return await conn.answer(command, timeout=timeout)
    finally:
        await conn.close()


async def start_session(
    pid: int, providers: Sequence[Provider], *, buffer_mb: int, rundown: bool
) -> tuple[Connection, int]:
    """An EventPipe session: the connection its stream arrives on, and its id."""
    command = COLLECT_TRACING if rundown else COLLECT_TRACING2
    conn = await Connection.open(pid)
    try:
        await conn.send(command, collect_payload(providers, buffer_mb=buffer_mb, rundown=rundown))
        body = await conn.answer(command)
    except BaseException:
        await conn.close()
        raise
    if len(body) < 8:
        await conn.close()
        raise IpcError(f"{command.name}: a {len(body)}-byte answer, 8 expected")
    return conn, int(struct.unpack("<Q", body[:8])[0])


async def stop_session(pid: int, session_id: int) -> None:
    """StopTracing: the runtime flushes (and, with rundown, writes the method names)
    and then ends the session's stream."""
    await call(pid, STOP_TRACING, struct.pack("<Q", session_id), timeout=30.0)


def dump_payload(path: str, dump_type: int) -> bytes:
    return utf16(path) + struct.pack("<II", dump_type, 0)
