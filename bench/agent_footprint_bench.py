"""The agent's footprint: resident memory when idle, and start-up time to /healthz.

One command: ``.venv/bin/python bench/agent_footprint_bench.py [--runs N]``.

Baseline in the same run: a bare uvicorn "hello" app (one route, nothing else),
started the same way with the same interpreter. Runs alternate agent / baseline.
Start-up is the time from ``exec`` to the first 200 from ``/healthz``; RSS is
VmRSS of the server process after ``/healthz`` answered and the process sat
idle for a second (and again after one ``GET /processes``, which imports the
most the agent imports lazily). Targets: agent idle RSS < 80 MB, start-up < 2 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

HELLO = """
import sys
import uvicorn

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"status":"ok"}'})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


BENCH_TOKEN = "footprint-bench-token-0123456789"  # a throwaway, local


def get(url: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {BENCH_TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as r:
            return int(r.status)
    except OSError:
        return 0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(argv: list[str], env: dict[str, str], port: int) -> tuple[float, float, float]:
    """(start-up seconds, idle RSS MB, RSS MB after one /processes)"""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    try:
        while get(f"http://127.0.0.1:{port}/healthz") != 200:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv} exited with {proc.returncode}")
            if time.monotonic() - t0 > 30:
                raise RuntimeError(f"{argv} did not answer within 30 s")
            time.sleep(0.01)
        startup = time.monotonic() - t0
        time.sleep(1.0)
        idle = rss_mb(proc.pid)
        get(f"http://127.0.0.1:{port}/processes")
        busy = rss_mb(proc.pid)
        return startup, idle, busy
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="footprint-", dir="/var/tmp"))
    hello = work / "hello.py"
    hello.write_text(HELLO)
    agent_s, agent_idle, agent_busy, base_s, base_idle = [], [], [], [], []
    try:
        for i in range(args.runs):
            for which in ("agent", "hello") if i % 2 == 0 else ("hello", "agent"):
                port = free_port()
                if which == "agent":
                    env = {
                        **os.environ,
                        "PYTHONPATH": str(REPO),
                        "TRACECAR_AGENT_PORT": str(port),
                        "TRACECAR_AGENT_DATA_DIR": str(work / f"data-{i}"),
                        "TRACECAR_AGENT_LOG_LEVEL": "warning",
                        "TRACECAR_AGENT_INSTANCE_ID": f"footprint{port}",
                        "TRACECAR_AGENT_TOKEN": BENCH_TOKEN,
                    }
                    s, idle, busy = measure([sys.executable, "-m", "agent"], env, port)
                    agent_s.append(s)
                    agent_idle.append(idle)
                    agent_busy.append(busy)
                else:
                    s, idle, _ = measure(
                        [sys.executable, str(hello), str(port)], {**os.environ}, port
                    )
                    base_s.append(s)
                    base_idle.append(idle)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    a_s, b_s = statistics.median(agent_s), statistics.median(base_s)
    a_m, b_m = statistics.median(agent_idle), statistics.median(base_idle)
    ok_s = "OK" if a_s < 2 else "ABOVE TARGET"
    ok_m = "OK" if a_m < 80 else "ABOVE TARGET"
    busy = statistics.median(agent_busy)
    print(f"agent footprint, {args.runs} alternating runs each (medians)")
    print(f"  start-up to /healthz: agent {a_s:.3f} s, bare uvicorn {b_s:.3f} s")
    print(f"    ratio {a_s / b_s:.2f}x; target agent < 2 s: {ok_s}")
    print(f"  idle RSS: agent {a_m:.1f} MB, bare uvicorn {b_m:.1f} MB")
    print(f"    ratio {a_m / b_m:.2f}x; target agent < 80 MB: {ok_m}")
    print(f"  RSS after one GET /processes: agent {busy:.1f} MB")
    print(f"  start-up runs: agent {_r(agent_s)}, bare uvicorn {_r(base_s)}")


def _r(xs: list[float]) -> list[float]:
    return [round(x, 3) for x in xs]


if __name__ == "__main__":
    main()
