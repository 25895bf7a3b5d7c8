"""Symbolization benchmark: the cost of naming frames of stripped Go binaries from
their ``.gopclntab`` (agent.symbolize), against the ``.symtab`` lookup of the same
binary unstripped, and the post-processing time of a stripped Go profile against
``perf script`` alone, all measured in the same run.

    .venv/bin/python bench/symbolize_bench.py [--addresses 200000] [--binary PATH]

The large binary is ``--binary`` (an unstripped Go executable), else the MinIO server
the store tests build (/var/cache/tracecar/stores/bin/minio-*, 143 MB), else a small
Go program built here. Its stripped copy (``objcopy --strip-all``: .gopclntab stays)
and the recordings are kept in .cache/bench/.

Prints, for the large binary: opening its pclntab vs loading its symtab (ms), the cost
per address (pclntab names with inlined frames, pclntab with file:line, symtab), and
the Python memory each holds; then, for a stripped Go profile: perf script alone,
post-processing with the symbolizer, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import glob
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent import _proc, symbols  # noqa: E402
from agent.profiling.perf_script import perf_data_to_folded, perf_script_argv  # noqa: E402
from agent.symbolize import _objects  # noqa: E402
from agent.symbolize.resolver import Symbolizer  # noqa: E402

CACHE = ROOT / ".cache" / "bench"
print = functools.partial(print, flush=True)
GO_ENV = {
    **os.environ,
    "GOTOOLCHAIN": "local",
    "GOFLAGS": "-mod=mod",
    "CGO_ENABLED": "0",
    "GOCACHE": os.environ.get("GOCACHE", "/var/cache/tracecar/bench-gocache"),
}
LEAF_GO = (ROOT / "tests" / "agent" / "test_symbols_integration.py").read_text()
LEAF_GO = LEAF_GO.split('LEAF_GO = r"""', 1)[1].split('"""', 1)[0]


def build_small(out: Path, *, strip: bool) -> Path:
    src = CACHE / "gosrc"
    src.mkdir(parents=True, exist_ok=True)
    (src / "main.go").write_text(LEAF_GO)
    (src / "go.mod").write_text("module leaf\n\ngo 1.22\n")
    flags = ["-ldflags=-s -w"] if strip else []
    subprocess.run(
        [shutil.which("go") or "go", "build", *flags, "-o", str(out), "."],
        cwd=src,
        env=GO_ENV,
        check=True,
        timeout=600,
    )
    return out


def large_binary(given: str | None) -> Path:
    if given:
        return Path(given)
    found = sorted(glob.glob("/var/cache/tracecar/stores/bin/minio-*"))
    if found:
        return Path(found[-1])
    return build_small(CACHE / "leaf-full", strip=False)


def timed(fn, runs: int = 3) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def lookups(full: Path, n: int, *, symtab: bool = True) -> None:
    stripped = CACHE / (full.name + ".stripped")
    if not stripped.exists() or stripped.stat().st_mtime < full.stat().st_mtime:
        subprocess.run(["objcopy", "--strip-all", str(full), str(stripped)], check=True)
    print(
        f"binary: {full} ({full.stat().st_size >> 20} MB; stripped copy "
        f"{stripped.stat().st_size >> 20} MB)"
    )
    if not symtab:
        return

    tracemalloc.start()
    t = time.perf_counter()
    obj = _objects.load_object(stripped)
    open_s = time.perf_counter() - t
    go_mem = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert obj is not None and obj.go is not None, "no usable pclntab"
    tab = obj.go
    tracemalloc.start()
    t = time.perf_counter()
    syms = symbols.object_symbols(full)
    symtab_s = time.perf_counter() - t
    sym_mem = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(
        f"  pclntab ({tab.version}, {tab.nfunc} functions, inline tree: {tab.inline}): "
        f"opened in {open_s * 1e3:.1f} ms, {go_mem >> 10} KiB of Python memory"
    )
    print(
        f"  symtab baseline ({len(syms.functions)} functions): loaded in "
        f"{symtab_s * 1e3:.1f} ms, {sym_mem >> 10} KiB of Python memory "
        f"(pclntab/symtab open time {open_s / symtab_s:.3f}x)"
    )

    rng = random.Random(42)
    funcs = [(e, s) for _n, e, s in tab.functions() if s > 0]
    pcs = [e + rng.randrange(s) for e, s in (rng.choice(funcs) for _ in range(n))]
    # Fresh tables for the timing: the per-function records are decoded lazily.
    obj2 = _objects._load.__wrapped__(str(stripped), (0, 0, 0, 0))  # uncached copy
    assert obj2.go is not None
    tab2 = obj2.go
    names = timed(lambda: [tab2.frames(pc, lines=False) for pc in pcs], runs=1)
    names_warm = timed(lambda: [tab2.frames(pc, lines=False) for pc in pcs])
    lines = timed(lambda: [tab2.frames(pc, lines=True) for pc in pcs])
    base = timed(lambda: [syms.function_at(pc) for pc in pcs])
    print(
        f"  {n} random addresses: pclntab names (cold) {names / n * 1e6:.2f} us/address, "
        f"(warm) {names_warm / n * 1e6:.2f} us, with file:line {lines / n * 1e6:.2f} us; "
        f"symtab bisect {base / n * 1e6:.2f} us"
    )
    print(
        f"  ratio pclntab names / symtab lookup: {names_warm / base:.2f}x warm, "
        f"{names / base:.2f}x cold"
    )


async def post(perf_data: Path, sym: Symbolizer | None, timeout: float) -> dict[str, int]:
    return await perf_data_to_folded(perf_data, timeout=timeout, symbolizer=sym)


def _minio(stripped: Path) -> tuple[list[str], dict[str, str], list[str]]:
    """argv, env and a wrk load for the stripped MinIO server on a free port."""
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    data = CACHE / "minio-data"
    data.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "MINIO_ROOT_USER": "benchuser",
        "MINIO_ROOT_PASSWORD": "benchpassword",
        "MINIO_UPDATE": "off",
        "MINIO_BROWSER": "off",
    }
    argv = [
        str(stripped),
        "server",
        str(data),
        "--quiet",
        "--address",
        f"127.0.0.1:{ports[0]}",
        "--console-address",
        f"127.0.0.1:{ports[1]}",
    ]
    load = ["wrk", "-t1", "-c8", f"http://127.0.0.1:{ports[0]}/minio/health/cluster"]
    return argv, env, load


def postprocessing(seconds: float, rounds: int, large: Path) -> None:
    stripped = CACHE / (large.name + ".stripped")
    if "minio" in large.name and shutil.which("wrk"):
        argv, env, load = _minio(stripped)
        what = f"the stripped MinIO server under wrk ({stripped.stat().st_size >> 20} MB)"
    else:
        exe = CACHE / "leaf-stripped"
        if not exe.exists():
            build_small(exe, strip=True)
        argv, env, load = [str(exe)], dict(os.environ), []
        what = "a small stripped Go program"
    data = CACHE / "go-stripped.data"
    app = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wrk = None
    try:
        time.sleep(0.3)
        if load:
            health = load[-1].replace("/cluster", "/live")
            deadline = time.monotonic() + 120
            while subprocess.run(
                ["curl", "-sf", "-o", "/dev/null", health], check=False
            ).returncode:
                assert time.monotonic() < deadline, "MinIO did not start"
                time.sleep(0.5)
            wrk = subprocess.Popen(
                [*load[:-1], "-d", f"{seconds + 5:g}s", load[-1]], stdout=subprocess.DEVNULL
            )
            time.sleep(1)
        subprocess.run(
            [
                "perf",
                "record",
                "-q",
                "-F",
                "999",
                "-g",
                "-p",
                str(app.pid),
                "-o",
                str(data),
                "--",
                "sleep",
                f"{seconds:g}",
            ],
            check=True,
            timeout=seconds + 60,
            stderr=subprocess.DEVNULL,
        )

        def script() -> None:
            # Through the agent's own door to child processes, as post-processing runs it
            # (same stdin, session and environment: perf's start-up differs otherwise).
            async def alone() -> None:
                null = os.open(os.devnull, os.O_WRONLY)
                try:
                    child = await _proc.Child.start(perf_script_argv(data), stdout=null)
                finally:
                    os.close(null)
                await _proc.drain_tail(child.proc.stderr, keep=65536)
                await child.wait()

            asyncio.run(alone())

        def plain() -> None:
            asyncio.run(post(data, None, 600))

        def named() -> dict[str, int]:
            sym = Symbolizer()
            sym.prepare([app.pid])
            return asyncio.run(post(data, sym, 600))

        # Arms interleaved, medians: the machine is shared and its load drifts.
        times: dict[str, list[float]] = {"script": [], "plain": [], "named": []}
        for _ in range(rounds):
            for arm, fn in (("script", script), ("plain", plain), ("named", named)):
                t = time.perf_counter()
                fn()
                times[arm].append(time.perf_counter() - t)
        tracemalloc.start()
        stacks = named()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    finally:
        if wrk is not None:
            wrk.kill()
            wrk.wait()
        app.send_signal(signal.SIGKILL)
        app.wait()
    med = {k: statistics.median(v) for k, v in times.items()}
    samples = sum(stacks.values())
    unnamed = sum(n for s, n in stacks.items() if f"[{Path(argv[0]).name}]" in s)
    names = {f for s in stacks for f in s.split(";")}
    print(
        f"post-processing a {seconds:g} s profile of {what}: {samples} samples, "
        f"{len(stacks)} stacks, {len(names)} distinct frames, {unnamed} samples with "
        f"unnamed frames; {rounds} rounds, medians:"
    )
    print(
        f"  perf script alone {med['script'] * 1e3:.0f} ms; collapse without symbols "
        f"{med['plain'] * 1e3:.0f} ms ({med['plain'] / med['script']:.2f}x); with pclntab "
        f"names, inlined frames and leaf callers {med['named'] * 1e3:.0f} ms "
        f"({med['named'] / med['script']:.2f}x perf script alone); symbolizer's Python "
        f"memory peak {peak >> 20} MiB"
    )
    minio = sum(n for st, n in stacks.items() if "github.com/minio/" in st)
    print(f"  samples naming github.com/minio/... functions: {minio} of {samples}")
    top = sorted(stacks.items(), key=lambda kv: -kv[1])[:3]
    for s, n in top:
        print(f"  e.g. {n:5d} ...{s[-150:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addresses", type=int, default=200_000)
    ap.add_argument("--binary", help="an unstripped Go executable (default: MinIO if built)")
    ap.add_argument("--seconds", type=float, default=10.0, help="recording length")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-lookups", action="store_true", help="post-processing only")
    args = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    large = large_binary(args.binary)
    lookups(large, args.addresses, symtab=not args.skip_lookups)
    postprocessing(args.seconds, args.rounds, large)


if __name__ == "__main__":
    main()
