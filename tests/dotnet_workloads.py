""".NET test workloads on a real CoreCLR, built inside the test harness.

No registry here serves the .NET SDK, but PyPI's ``dotnetcore2==3.1.23`` is a
Microsoft wheel carrying the .NET Core 3.1.23 runtime (``dotnet``, the shared
framework with ``libcoreclr.so``, ``createdump`` and the LTTng tracepoint
provider), and Debian's ``mcs`` (mono-mcs) compiles C# against that runtime's
own assemblies. ../shared/platform-notes.md (".NET") has the recipe.

The runtime is downloaded once and unpacked under ``/var/cache/tracecar/dotnet``
(outside the repository, shared by test runs); compiled workloads are cached
there too, keyed by a hash of their source. Nothing here is mocked: tests run
the real runtime with ``dotnet prog.dll``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

VERSION = "3.1.23"
CACHE = Path(os.environ.get("TRACECAR_DOTNET_CACHE", "/var/cache/tracecar/dotnet"))
ROOT = CACHE / VERSION
DOTNET = ROOT / "dotnet"
FW = ROOT / "shared" / "Microsoft.NETCore.App" / VERSION

RUNTIMECONFIG = {
    "runtimeOptions": {
        "tfm": "netcoreapp3.1",
        "framework": {"name": "Microsoft.NETCore.App", "version": "3.1.0"},
        # Debian 12's libicu72 is newer than the 3.1 runtime knows: without this it aborts.
        "configProperties": {"System.Globalization.Invariant": True},
    }
}
DEFAULT_REFS = ("System.Private.CoreLib", "System.Runtime", "System.Console")


def ensure_runtime() -> Path:
    """The unpacked runtime's ``dotnet`` host, downloading the wheel the first time."""
    if DOTNET.exists() and (FW / "libcoreclr.so").exists():
        return DOTNET
    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = CACHE / "wheel"
    found = sorted(wheels.glob(f"dotnetcore2-{VERSION}-*.whl")) if wheels.exists() else []
    if not found:
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
        subprocess.run(
            [*pip, "download", "--no-deps", "-q", "-d", str(wheels), f"dotnetcore2=={VERSION}"],
            check=True,
            timeout=600,
        )
        found = sorted(wheels.glob(f"dotnetcore2-{VERSION}-*.whl"))
    staging = CACHE / f".unpack-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(found[0]) as z:
        z.extractall(staging)
    bindir = staging / "dotnetcore2" / "bin"
    for exe in (
        bindir / "dotnet",
        bindir / "shared/Microsoft.NETCore.App" / VERSION / "createdump",
    ):
        exe.chmod(0o755)  # zip entries carry no mode
    # atomic: a concurrent run sees all or nothing; one that unpacked it meanwhile wins
    with contextlib.suppress(OSError):
        bindir.rename(ROOT)
    shutil.rmtree(staging, ignore_errors=True)
    return DOTNET


def build(source: str, *, name: str = "prog", refs: tuple[str, ...] = DEFAULT_REFS) -> Path:
    """Compile ``source`` (C#) with mcs against the runtime; the directory holding
    ``NAME.dll`` and ``NAME.runtimeconfig.json`` (cached by the source's hash)."""
    ensure_runtime()
    mcs = shutil.which("mcs")
    if mcs is None:
        raise RuntimeError("mcs is missing: run scripts/setup (it installs mono-mcs)")
    key = hashlib.sha256(f"{name}\0{refs}\0{source}".encode()).hexdigest()[:16]
    out = CACHE / "build" / f"{name}-{key}"
    dll = out / f"{name}.dll"
    if dll.exists():
        return out
    tmp = CACHE / "build" / f".{name}-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / f"{name}.cs").write_text(source)
    argv = [mcs, "-nostdlib", "-noconfig", "-target:exe", "-optimize+", "-debug-",
            f"-out:{tmp / (name + '.dll')}"]  # fmt: skip
    argv += [f"-r:{FW / (r + '.dll')}" for r in refs]
    argv.append(str(tmp / f"{name}.cs"))
    done = subprocess.run(argv, timeout=120, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"mcs failed on {name}.cs: {done.stdout}{done.stderr}")
    (tmp / f"{name}.runtimeconfig.json").write_text(json.dumps(RUNTIMECONFIG))
    try:
        tmp.rename(out)
    except OSError:  # another run built the same source meanwhile: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def app_files(built: Path, *, under: str = "app") -> dict[str, Path]:
    """``files=`` for :meth:`tests.podsim.SimPod.run`: the compiled app under /srv/UNDER."""
    return {f"{under}/{p.name}": p for p in built.iterdir() if p.suffix in (".dll", ".json")}


# Main -> Outer -> Middle -> Hot, nearly all the time in Hot. The callers are neither
# inlined nor optimised: optimised JIT code omits frame pointers, and a frame-pointer
# unwind then skips the callers (platform notes). Hot itself may be optimised.
CHAIN_CS = r"""
using System;
using System.Runtime.CompilerServices;

namespace TraceCar.Demo {
    public static class Chain {
        static long sink;

        [MethodImpl(MethodImplOptions.NoInlining)]
        static long Hot(long n) {
            long s = 0;
            for (long i = 0; i < n; i++) s += (i * i) ^ (s >> 3);
            return s;
        }

        [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.NoOptimization)]
        static long Middle(long n) { return Hot(n) + 1; }

        [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.NoOptimization)]
        static long Outer(long n) { return Middle(n) + 1; }

        [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.NoOptimization)]
        public static void Main(string[] args) {
            Console.WriteLine("ready");
            for (;;) sink += Outer(20000000);
        }
    }
}
"""


# Allocates (a GC every few ms) and throws: the GC and exception events and counters.
# With an argument N it waits for /tmp/go, throws exactly N exceptions, writes the
# count it threw to /tmp/thrown, then keeps allocating without throwing.
BUSY_CS = r"""
using System;
using System.Collections.Generic;
using System.IO;
using System.Threading;

namespace TraceCar.Demo {
    public static class Busy {
        static object keep;

        static void Allocate(List<byte[]> list) {
            for (int i = 0; i < 1000; i++) {
                list.Add(new byte[1000]);
                if (list.Count > 5000) list.Clear();
            }
            keep = list;
        }

        public static void Main(string[] args) {
            var list = new List<byte[]>();
            long thrown = 0;
            Console.WriteLine("ready");
            if (args.Length > 0) {
                long n = long.Parse(args[0]);
                while (!File.Exists("/tmp/go")) { Allocate(list); Thread.Sleep(20); }
                for (long i = 0; i < n; i++) {
                    try { throw new InvalidOperationException("counted " + i); }
                    catch (InvalidOperationException) { thrown++; }
                }
                File.WriteAllText("/tmp/thrown", thrown.ToString());
                for (;;) { Allocate(list); Thread.Sleep(5); }
            }
            for (;;) {
                Allocate(list);
                try { throw new InvalidOperationException("boom " + thrown); }
                catch (InvalidOperationException) { thrown++; }
                Thread.Sleep(1);
            }
        }
    }
}
"""
BUSY_REFS = (*DEFAULT_REFS, "System.Collections", "System.Threading.Thread", "System.IO.FileSystem")


UST212 = CACHE / "bullseye"
UST212_LIBS = UST212 / "root" / "usr" / "lib" / "x86_64-linux-gnu"


def ensure_lttng_ust_212() -> Path:
    """Debian 11's LTTng-UST 2.12 libraries (liblttng-ust.so.0), for LD_LIBRARY_PATH.

    The 3.1 runtime's tracepoint provider links liblttng-ust.so.0; Debian 12 ships
    only .so.1 (2.13), so without these the runtime silently loads no provider. They
    are fetched with apt-get (an apt configuration naming bullseye, kept in the cache)
    and unpacked with dpkg -x; Debian 12's lttng-sessiond 2.13 accepts their apps.
    """
    if (UST212_LIBS / "liblttng-ust.so.0").exists():
        return UST212_LIBS
    etc = UST212 / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "sources.list").write_text("deb http://deb.debian.org/debian bullseye main\n")
    (UST212 / "status").touch()
    opts = [
        f"-oDir::Etc::SourceList={etc / 'sources.list'}",
        "-oDir::Etc::SourceParts=/dev/null",
        f"-oDir::State::Lists={UST212 / 'lists'}",
        f"-oDir::State::Status={UST212 / 'status'}",
        f"-oDir::Cache={UST212 / 'cache'}",
        "-oDebug::NoLocking=1",
    ]
    (UST212 / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    debs = UST212 / "debs"
    debs.mkdir(exist_ok=True)
    subprocess.run(["apt-get", *opts, "update", "-qq"], check=True, timeout=300)
    subprocess.run(
        ["apt-get", *opts, "download", "-qq", "liblttng-ust0", "liburcu6", "liblttng-ust-ctl4"],
        check=True,
        timeout=300,
        cwd=debs,
    )
    for deb in debs.glob("*.deb"):
        subprocess.run(["dpkg", "-x", str(deb), str(UST212 / "root")], check=True, timeout=60)
    shutil.rmtree(UST212 / "lists", ignore_errors=True)
    shutil.rmtree(UST212 / "cache", ignore_errors=True)
    return UST212_LIBS
