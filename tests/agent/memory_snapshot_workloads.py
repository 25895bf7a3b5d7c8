"""Workloads that hold known amounts of memory, for the memory snapshot, heap dump,
recorder RSS and RSS trigger tests (and bench/memory_snapshot_bench.py).

* ``HOLD_C``: mallocs and touches ``argv[1]`` MiB in ``hold_memory`` at start, then,
  while growth is on (SIGUSR1 toggles it), another ``argv[2]`` MiB every 250 ms. A
  known 64-bit marker in a global lets a test find it in a core dump.
* ``MAPS_C``: ``argv[1]`` separate anonymous mappings of 64 KiB each (touched), for
  the cost of reading a process with many mappings.
* ``PY_CACHE``: a Python cache of 300,000 small tuples (pymalloc's blocks), then asleep.
* ``JAVA_HOG``: a JVM holding ``args[0]`` MiB in 1 MiB byte arrays (``Hog.keep``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

MARKER = 0x7ACE7ACE12345678

HOLD_C = r"""
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
volatile unsigned long tracecar_marker;
volatile sig_atomic_t growing;
static void toggle(int sig) { (void)sig; growing = !growing; }
__attribute__((noinline)) void *hold_memory(size_t mib) {
    char *p = malloc(mib << 20);
    if (p) memset(p, 0x5a, mib << 20);
    return p;
}
int main(int argc, char **argv) {
    size_t start = argc > 1 ? strtoul(argv[1], 0, 10) : 64;
    size_t step = argc > 2 ? strtoul(argv[2], 0, 10) : 0;
    tracecar_marker = MARKER;
    signal(SIGUSR1, toggle);
    if (start) hold_memory(start);
    for (;;) {
        usleep(250000);
        if (growing && step) hold_memory(step);
    }
}
""".replace("MARKER", f"{MARKER:#x}UL")

MAPS_C = r"""
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 200;
    for (int i = 0; i < n; i++) {
        /* alternate protections: neighbours never merge into one mapping */
        int prot = PROT_READ | PROT_WRITE | (i % 2 ? 0 : PROT_EXEC);
        char *p = mmap(0, 65536, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p != MAP_FAILED) memset(p, 1, 65536);
    }
    for (;;) pause();
}
"""

PY_CACHE = r"""
import time
cache = [("entry", i) for i in range(300000)]
print("ready", flush=True)
while True:
    time.sleep(1)
"""

JAVA_HOG = r"""
import java.util.ArrayList;
import java.util.List;
public class Hog {
    static final List<byte[]> keep = new ArrayList<>();
    public static void main(String[] args) throws Exception {
        int mib = args.length > 0 ? Integer.parseInt(args[0]) : 64;
        for (int i = 0; i < mib; i++) keep.add(new byte[1 << 20]);
        System.out.println("ready");
        while (true) Thread.sleep(1000);
    }
}
"""


def build_hog(out_dir: Path) -> Path:
    """Hog.class in ``out_dir``."""
    src = out_dir / "Hog.java"
    src.write_text(JAVA_HOG)
    subprocess.run(["javac", "-d", str(out_dir), str(src)], check=True, timeout=120)
    return out_dir / "Hog.class"
