"""Re-record the golden nettrace streams of tests/dotnet/data from a real runtime.

    .venv/bin/python -m tests.dotnet.record_golden

Runs the busy workload (tests/dotnet_workloads.py) on the cached .NET Core 3.1.23,
opens EventPipe sessions with the agent's own IPC client and keeps each stream
gzipped (the method rundown at the end of every 3.1 session compresses well).
"""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import time
from pathlib import Path

from agent.dotnet import _ipc
from agent.dotnet._model import preset_providers, resolve
from tests import dotnet_workloads as dn

DATA = Path(__file__).resolve().parent / "data"


async def record(pid: int, providers: list[_ipc.Provider], seconds: float) -> bytes:
    conn, session = await _ipc.start_session(pid, providers, buffer_mb=16, rundown=True)
    chunks: list[bytes] = []

    async def pump() -> None:
        while chunk := await conn.reader.read(1 << 16):
            chunks.append(chunk)

    reader = asyncio.create_task(pump())
    await asyncio.sleep(seconds)
    await _ipc.stop_session(pid, session)
    await asyncio.wait_for(reader, 30)
    await conn.close()
    return b"".join(chunks)


def main() -> None:
    dotnet = dn.ensure_runtime()
    built = dn.build(dn.BUSY_CS, name="busy", refs=dn.BUSY_REFS)
    app = subprocess.Popen([str(dotnet), str(built / "busy.dll")], stdout=subprocess.PIPE)
    try:
        assert app.stdout is not None and app.stdout.readline().strip() == b"ready"
        time.sleep(1)
        counters = [_ipc.Provider("System.Runtime", 0xFFFFFFFF, 4, "EventCounterIntervalSec=1")]
        exceptions = [
            _ipc.Provider(*resolve(p, i)) for i, p in enumerate(preset_providers("exceptions"))
        ]
        for name, providers, seconds in (
            ("counters", counters, 2.5),
            ("exceptions", exceptions, 0.5),
        ):
            data = asyncio.run(record(app.pid, providers, seconds))
            (DATA / f"{name}.nettrace.gz").write_bytes(gzip.compress(data, 9, mtime=0))
            print(name, len(data), "bytes")
    finally:
        app.kill()
        app.wait(10)


if __name__ == "__main__":
    main()
