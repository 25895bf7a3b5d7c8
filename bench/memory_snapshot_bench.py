"""The cost of ``GET /processes/{pid}/memory``: on a process with 200 mappings (the
kernel's part: smaps_rollup and smaps read and parsed), then with the runtime's part
for a JVM (two jcmds through jattach: GC.heap_info, GC.class_histogram -all, and the
safepoint the histogram's heap walk takes, from the JVM's own safepoint log) and a
CPython process (pymalloc read live from /proc/PID/mem: the first request also runs
gdb on libpython once for the layout).

One command: ``.venv/bin/python bench/memory_snapshot_bench.py [--requests N]``.

A real agent (``python -m agent`` on this machine, its own data directory). The
baseline, measured in the same run, alternating request by request: ``GET
/processes/{pid}`` on the same process (the agent's existing one-process read:
status, stat, maps, cgroup, environ, its ELF facts), which the snapshot also does
(for the comm, container and runtime it answers). Medians are compared. Target: the
snapshot within 1.5x the one-process read on 200 mappings (what it adds: reading and
parsing smaps, printed apart).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.memory import _parse  # noqa: E402
from bench._common import running_agent  # noqa: E402
from tests.agent.memory_snapshot_workloads import MAPS_C, PY_CACHE, build_hog  # noqa: E402
from tests.interpreters import PY312  # noqa: E402

TOKEN = "memory-bench-token-0123456789"  # a throwaway, local
_SAFEPOINT = re.compile(r'Safepoint "(\w+)".*At safepoint: (\d+) ns')


def timed(client: httpx.Client, path: str, **params: str) -> float:
    t0 = time.perf_counter()
    r = client.get(path, params=params)
    dt = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    return dt


def ms(xs: list[float]) -> str:
    med, lo, hi = 1e3 * statistics.median(xs), 1e3 * min(xs), 1e3 * max(xs)
    return f"median {med:.2f} ms (min {lo:.2f}, max {hi:.2f})"


def wait_for(pred: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--runtime-requests", type=int, default=10)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="memory-bench-", dir="/var/tmp"))
    (tmp / "maps.c").write_text(MAPS_C)
    binary = tmp / "maps"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(tmp / "maps.c")], check=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with running_agent(tmp / "data", token=TOKEN, timeout=120) as (_agent, client):
            app = subprocess.Popen([str(binary), "200"])
            procs.append(app)
            wait_for(lambda: _mappings(app.pid) >= 200, 10, "200 mappings")
            kernel_part(client, app.pid, args.requests)
            jvm_part(client, tmp, procs, args.runtime_requests)
            python_part(client, tmp, procs, args.runtime_requests)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


def _mappings(pid: int) -> int:
    return len(Path(f"/proc/{pid}/maps").read_text().splitlines())


def kernel_part(client: httpx.Client, pid: int, n: int) -> None:
    nmaps = _mappings(pid)
    print(
        f"\nGET /processes/{pid}/memory?runtime=false on a process with {nmaps} mappings, "
        f"{n} requests each"
    )
    base: list[float] = []
    mem: list[float] = []
    for i in range(n):
        for which in (0, 1) if i % 2 else (1, 0):
            if which:
                mem.append(timed(client, f"/processes/{pid}/memory", runtime="false"))
            else:
                base.append(timed(client, f"/processes/{pid}"))
    # Where the time goes: reading and parsing, in this process.
    t0 = time.perf_counter()
    for _ in range(n):
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        smaps = Path(f"/proc/{pid}/smaps").read_text()
    read = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        _parse.rollup(rollup)
        _parse.summary(smaps, 10)  # what the snapshot does
    parse = (time.perf_counter() - t0) / n
    bm, mm = statistics.median(base), statistics.median(mem)
    print(f"  baseline GET /processes/{{pid}}:  {ms(base)}")
    print(f"  GET /processes/{{pid}}/memory:    {ms(mem)}")
    print(
        f"    of which reading smaps_rollup + smaps ({len(smaps):,} bytes) {1e3 * read:.2f} ms, "
        f"parsing {1e3 * parse:.2f} ms"
    )
    verdict = "OK" if mm <= 1.5 * bm else "ABOVE TARGET"
    print(f"  ratio memory/baseline: {mm / bm:.2f}x (target <= 1.5x: {verdict})")


def jvm_part(client: httpx.Client, tmp: Path, procs: list[subprocess.Popen[bytes]], n: int) -> None:
    hog = build_hog(tmp)
    log = tmp / "safepoint.log"
    app = subprocess.Popen(
        ["java", "-Xmx512m", f"-Xlog:safepoint:file={log}", "-cp", str(hog.parent), "Hog", "64"],
        stdout=subprocess.PIPE,
    )
    procs.append(app)
    assert app.stdout is not None
    assert app.stdout.readline().strip() == b"ready"
    print(f"\nthe same with runtime=true for a JVM holding 64 MiB (jattach), {n} requests each")
    base = [timed(client, f"/processes/{app.pid}/memory", runtime="false") for _ in range(n)]
    before = len(log.read_text().splitlines()) if log.exists() else 0
    full = [timed(client, f"/processes/{app.pid}/memory", runtime="true") for _ in range(n)]
    pauses = [
        int(m.group(2))
        for line in log.read_text().splitlines()[before:]
        if (m := _SAFEPOINT.search(line)) and m.group(1) == "GC_HeapInspection"
    ]
    print(f"  runtime=false: {ms(base)}")
    print(f"  runtime=true:  {ms(full)} (GC.heap_info + GC.class_histogram -all)")
    if pauses:
        print(
            f"  the app's pause per snapshot (the histogram's safepoint, from -Xlog:safepoint): "
            f"median {statistics.median(pauses) / 1e6:.2f} ms, max {max(pauses) / 1e6:.2f} ms "
            f"over {len(pauses)}"
        )


def python_part(
    client: httpx.Client, tmp: Path, procs: list[subprocess.Popen[bytes]], n: int
) -> None:
    if not Path(PY312).exists():
        print(f"\n{PY312} missing: no CPython figure")
        return
    (tmp / "cache.py").write_text(PY_CACHE)
    app = subprocess.Popen([PY312, "-u", str(tmp / "cache.py")], stdout=subprocess.PIPE)
    procs.append(app)
    assert app.stdout is not None
    assert app.stdout.readline().strip() == b"ready"
    print(
        f"\nthe same with runtime=true for CPython 3.12 holding 300,000 tuples (live read), "
        f"{n} requests"
    )
    base = [timed(client, f"/processes/{app.pid}/memory", runtime="false") for _ in range(n)]
    first = timed(client, f"/processes/{app.pid}/memory", runtime="true")
    full = [timed(client, f"/processes/{app.pid}/memory", runtime="true") for _ in range(n)]
    alloc = client.get(f"/processes/{app.pid}/memory").json()["runtime_memory"]["python_allocator"]
    print(f"  runtime=false: {ms(base)}")
    print(f"  runtime=true, first (gdb reads libpython's layout once): {1e3 * first:.0f} ms")
    print(
        f"  runtime=true, then: {ms(full)} ({alloc['arenas']} arenas, {alloc['pools']} pools "
        "read live; the process is never stopped)"
    )


if __name__ == "__main__":
    main()
