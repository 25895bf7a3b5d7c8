"""Symbolization benchmark: the cost of naming frames of stripped Go binaries from
their ``.gopclntab`` (agent.symbolize), against the ``.symtab`` lookup of the same
binary unstripped; inlined native frames from DWARF against ``addr2line -i``; and the
post-processing time of a stripped Go profile against ``perf script`` alone, all
measured in the same run.

    .venv/bin/python bench/symbolize_bench.py [--target apiserver|minio|small]
        [--seconds 60] [--addresses 200000] [--binary PATH]

Targets of the post-processing arm: ``apiserver`` (the default when the cluster build
is cached, /var/cache/tracecar/cluster/bin/*/): the shipped, stripped (``-s -w``)
kube-apiserver (~100 MB) on its etcd, under wrk listing ConfigMaps; ``minio``: the
MinIO server the store tests build, stripped here, under wrk; ``small``: a small
stripped Go program built here.

The lookups arm uses ``--binary`` (an unstripped Go executable), else that MinIO build,
else the small program; its stripped copy (``objcopy --strip-all``: .gopclntab stays)
and the recordings are kept in .cache/bench/.

Prints, for the large binary: opening its pclntab vs loading its symtab (ms), the cost
per address (pclntab names with inlined frames, pclntab with file:line, symtab), and
the Python memory each holds; for libpython (a 30 MB native library with 13 MB of
DWARF): decoding its interpreter loop's unit and the cost per address of inlined
frames, against ``addr2line -i -f`` on the same addresses; then, for a stripped Go
profile: perf script alone, post-processing with and without the symbolizer, their
ratios, and the Python memory peak.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import glob
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from subprocess import Popen

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent import _proc, symbols  # noqa: E402
from agent.profiling.perf_script import perf_data_to_folded, perf_script_argv  # noqa: E402
from agent.symbolize import _objects  # noqa: E402
from agent.symbolize.dwarf import DwarfInline, load_dwarf  # noqa: E402
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


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


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


def cluster_bin() -> Path | None:
    found = sorted(glob.glob("/var/cache/tracecar/cluster/bin/*/.complete"))
    return Path(found[-1]).parent if found else None


def _apiserver(bin_dir: Path) -> tuple[list[str], dict[str, str], list[str], list[Popen]]:
    """argv, env and a wrk load for the shipped kube-apiserver, its etcd started here."""
    import socket

    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    work = CACHE / "apiserver"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    subprocess.run(
        ["openssl", "genrsa", "-out", str(work / "sa.key"), "2048"], check=True, capture_output=True
    )
    subprocess.run(
        ["openssl", "rsa", "-in", str(work / "sa.key"), "-pubout", "-out", str(work / "sa.pub")],
        check=True,
        capture_output=True,
    )
    (work / "tokens.csv").write_text('benchtoken,bench,1,"system:masters"\n')
    etcd_url = f"http://127.0.0.1:{ports[0]}"
    peer = f"http://127.0.0.1:{ports[1]}"
    etcd = Popen(
        [
            str(bin_dir / "etcd"),
            "--name=bench",
            f"--data-dir={work / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=bench={peer}",
            "--listen-metrics-urls=",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    argv = [
        str(bin_dir / "kube-apiserver"),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        "--advertise-address=10.0.0.1",
        f"--secure-port={ports[2]}",
        f"--cert-dir={work / 'certs'}",
        "--service-cluster-ip-range=10.96.0.0/16",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={work / 'sa.pub'}",
        f"--service-account-signing-key-file={work / 'sa.key'}",
        "--authorization-mode=AlwaysAllow",
        f"--token-auth-file={work / 'tokens.csv'}",
        "--profiling=false",
        "--v=0",
    ]
    url = f"https://127.0.0.1:{ports[2]}"
    load = [
        "wrk",
        "-t1",
        "-c8",
        "-H",
        "Authorization: Bearer benchtoken",
        f"{url}/api/v1/namespaces/kube-system/configmaps",
    ]
    return argv, dict(os.environ), load, [etcd]


def postprocessing(seconds: float, rounds: int, large: Path, target: str) -> None:
    stripped = CACHE / (large.name + ".stripped")
    helpers: list[Popen] = []
    health_argv: list[str] = []
    bins = cluster_bin()
    if target == "apiserver" and bins is not None and shutil.which("wrk"):
        argv, env, load, helpers = _apiserver(bins)
        health_argv = [
            "curl", "-skf", "-o", "/dev/null", "-H", "Authorization: Bearer benchtoken",
            load[-1].split("/api/")[0] + "/readyz",
        ]  # fmt: skip
        size = Path(argv[0]).stat().st_size >> 20
        what = f"the shipped stripped kube-apiserver ({size} MB) under wrk"
        project = "k8s.io/"
    elif target == "minio" and "minio" in large.name and shutil.which("wrk"):
        argv, env, load = _minio(stripped)
        health_argv = ["curl", "-sf", "-o", "/dev/null", load[-1].replace("/cluster", "/live")]
        what = f"the stripped MinIO server under wrk ({stripped.stat().st_size >> 20} MB)"
        project = "github.com/minio/"
    else:
        project = "main."
        exe = CACHE / "leaf-stripped"
        if not exe.exists():
            build_small(exe, strip=True)
        argv, env, load = [str(exe)], dict(os.environ), []
        what = "a small stripped Go program"
    data = CACHE / "go-stripped.data"
    time.sleep(2 if helpers else 0)
    app = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wrk = None
    try:
        time.sleep(0.3)
        if load:
            deadline = time.monotonic() + 180
            while subprocess.run(health_argv, check=False).returncode:
                assert time.monotonic() < deadline, f"{argv[0]} did not start"
                assert app.poll() is None, f"{argv[0]} exited"
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
        # CPU seconds per arm: (ours, perf's). A loaded machine stretches wall clocks
        # several-fold; on an idle 2-core one perf and the collapser run side by side,
        # so the wall time tends to the larger of the two.
        cpu: dict[str, list[tuple[float, float]]] = {k: [] for k in times}
        for _ in range(rounds):
            for arm, fn in (("script", script), ("plain", plain), ("named", named)):
                c0, k0 = time.process_time(), _children_cpu()
                t = time.perf_counter()
                fn()
                times[arm].append(time.perf_counter() - t)
                cpu[arm].append((time.process_time() - c0, _children_cpu() - k0))
        tracemalloc.start()
        plain()
        peak_plain = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
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
        for h in helpers:
            h.kill()
            h.wait()
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
        f"({med['named'] / med['script']:.2f}x perf script alone, "
        f"{med['named'] / med['plain']:.2f}x the collapse without symbols); Python memory "
        f"peak {peak >> 20} MiB with the symbolizer, {peak_plain >> 20} MiB without"
    )
    own = {k: statistics.median(c[0] for c in v) for k, v in cpu.items()}
    perf_cpu = {k: statistics.median(c[1] for c in v) for k, v in cpu.items()}
    floor = perf_cpu["script"] + own["script"]
    print(
        f"  CPU view (load average {os.getloadavg()[0]:.1f}): perf script alone "
        f"{floor * 1e3:.0f} ms CPU; without symbols: perf {perf_cpu['plain'] * 1e3:.0f} ms, "
        f"collapse {own['plain'] * 1e3:.0f} ms (critical path "
        f"{max(perf_cpu['plain'], own['plain']) / floor:.2f}x); with the symbolizer: perf "
        f"{perf_cpu['named'] * 1e3:.0f} ms, collapse and symbolizer "
        f"{own['named'] * 1e3:.0f} ms (critical path "
        f"{max(perf_cpu['named'], own['named']) / floor:.2f}x, total CPU "
        f"{(perf_cpu['named'] + own['named']) / floor:.2f}x)"
    )
    ours = sum(n for st, n in stacks.items() if project in st)
    print(f"  samples naming {project}... functions: {ours} of {samples}")
    top = sorted(stacks.items(), key=lambda kv: -kv[1])[:3]
    for s, n in top:
        print(f"  e.g. {n:5d} ...{s[-150:]}")


LIBPYTHON = "/root/.pyenv/versions/3.12.1/lib/libpython3.12.so.1.0"


def native_inline(n: int) -> None:
    """Inlined frames of libpython's interpreter loop: ours (per unit, then bisects)
    against ``addr2line -i -f`` on the same addresses (what ``perf --inline`` runs)."""
    lib = Path(LIBPYTHON)
    if not lib.exists():
        print(f"native inlined frames: skipped ({lib} is missing)")
        return
    syms = symbols.object_symbols(lib)
    fn = syms.lookup("_PyEval_EvalFrameDefault")
    assert fn is not None
    rng = random.Random(7)
    pcs = [fn.address + rng.randrange(fn.size) for _ in range(n)]
    t = time.perf_counter()
    dw = load_dwarf(lib)
    dw.inlined(pcs[0], deadline=time.monotonic() + 600)
    first = time.perf_counter() - t
    with lib.open("rb") as f:  # the same again, uncached, for its memory alone
        tracemalloc.start()
        DwarfInline(f).inlined(pcs[0], deadline=time.monotonic() + 600)
        mem = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    t = time.perf_counter()
    chains = [dw.inlined(pc, deadline=time.monotonic() + 600) for pc in pcs]
    per = (time.perf_counter() - t) / n
    t = time.perf_counter()
    out = subprocess.run(
        ["addr2line", "-e", str(lib), "-i", "-f", "-a"],
        input="".join(f"{pc:x}\n" for pc in pcs),
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    a2l = time.perf_counter() - t
    # addr2line: per address "0x..." then (function, file:line) pairs, innermost first.
    theirs: list[tuple[str, ...]] = []
    for block in out.split("0x")[1:]:
        lines = block.splitlines()[1:]
        names = lines[0::2]
        theirs.append(tuple(reversed(names[:-1])))
    same = sum(a == b for a, b in zip(chains, theirs, strict=False))
    with_inline = sum(1 for c in chains if c)
    print(
        f"native inlined frames, {lib.name} ({lib.stat().st_size >> 20} MB, its interpreter "
        f"loop's unit): first address (unit decoded) {first * 1e3:.0f} ms, "
        f"{mem >> 20} MiB of Python memory at peak; then {per * 1e6:.1f} us/address "
        f"({n} addresses, {with_inline} inside inlined calls); addr2line -i on the same "
        f"addresses {a2l * 1e3:.0f} ms ({a2l / (first + per * n):.2f}x ours); "
        f"chains equal to addr2line's: {same} of {n}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addresses", type=int, default=200_000)
    ap.add_argument("--binary", help="an unstripped Go executable (default: MinIO if built)")
    ap.add_argument(
        "--target",
        choices=("apiserver", "minio", "small"),
        default="apiserver" if cluster_bin() is not None else "minio",
        help="what the post-processing arm profiles",
    )
    ap.add_argument("--seconds", type=float, default=60.0, help="recording length")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-lookups", action="store_true", help="post-processing only")
    args = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    large = large_binary(args.binary)
    lookups(large, args.addresses, symtab=not args.skip_lookups)
    native_inline(min(args.addresses, 5000))
    postprocessing(args.seconds, args.rounds, large, args.target)


if __name__ == "__main__":
    main()
