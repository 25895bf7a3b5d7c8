"""Memory workloads with known byte counts, for alloc and leak profiles.

ALLOC_C waits for SIGUSR1 (so a test starts the work once the probes are in), then
runs ROUNDS rounds of two named functions and prints ``done``:

* ``balanced_work``: 64 blocks of 1000 bytes, all freed before it returns;
* ``leaky_work``: 16 blocks of 500 bytes, kept for ever.

Per round: 64,000 bytes allocated (and freed) by the first, 8,000 bytes allocated (and
leaked) by the second. Built -O1 -g -fno-omit-frame-pointer; the stores through
``volatile`` keep the compiler from removing the allocations. With the argument
``exit`` it exits right after the rounds (a target leaving mid-profile).
"""

from __future__ import annotations

ROUNDS = 2000
BALANCED_BYTES = 64 * 1000
LEAKY_BYTES = 16 * 500

ALLOC_C = r"""
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
static void *volatile kept[16 * 100000];
static int nkept;

__attribute__((noinline)) void balanced_work(void) {
    void *p[64];
    for (int i = 0; i < 64; i++) { p[i] = malloc(1000); *(volatile char *)p[i] = 1; }
    for (int i = 0; i < 64; i++) free(p[i]);
    __asm__ volatile("");
}

__attribute__((noinline)) void leaky_work(void) {
    for (int i = 0; i < 16; i++) { kept[nkept] = malloc(500); *(volatile char *)kept[nkept++] = 1; }
    __asm__ volatile("");
}

int main(int argc, char **argv) {
    int rounds = ROUNDS;
    signal(SIGUSR1, on_usr1);
    printf("ready\n"); fflush(stdout);
    while (!go) pause();
    for (int r = 0; r < rounds; r++) { balanced_work(); leaky_work(); }
    printf("done\n"); fflush(stdout);
    if (argc > 1 && strcmp(argv[1], "exit") == 0) return 0;
    for (;;) pause();
}
""".replace("ROUNDS;", f"{ROUNDS};")
ALLOC_C_FLAGS = ("-O1", "-g", "-fno-omit-frame-pointer")

# No allocator symbols: a static binary, stripped.
STATIC_C = r"""
#include <unistd.h>
int main(void) { for (;;) pause(); }
"""

# Python: a cache that only grows vs. a loop that allocates and drops. After SIGUSR1,
# PY_ROUNDS rounds: grow_cache keeps one 4096-byte bytearray (its buffer, over pymalloc's
# 512-byte limit, comes from malloc), churn allocates eight and drops them; then "done".
# SIGUSR2 prints whether tracemalloc traces (``tracing True``): nothing may be left on.
# Each function runs once before "ready" (see the warm-up below).
PY_ROUNDS = 5000
PY_BLOCK = 4096
PY_MEMORY = r"""
import signal

CACHE = []
go = False


def on_usr1(signum, frame):
    global go
    go = True


def grow_cache():
    CACHE.append(bytearray(4096))


def churn():
    junk = [bytearray(4096) for _ in range(8)]
    del junk


def on_usr2(signum, frame):
    import tracemalloc
    print("tracing", tracemalloc.is_tracing(), flush=True)


signal.signal(signal.SIGUSR1, on_usr1)
signal.signal(signal.SIGUSR2, on_usr2)
# Warm up: an interpreter's one-time caches (Python 3.8 keeps a frame per code object)
# are allocated before the window, not counted as what the churn leaves behind.
churn()
print("ready", flush=True)
while not go:
    signal.pause()
for _ in range(ROUNDS):
    grow_cache()
    churn()
print("done", flush=True)
while True:
    signal.pause()
""".replace("ROUNDS", str(PY_ROUNDS))

# Python alloc: a loop that allocates and drops vs. a cache that grows. After SIGUSR1,
# PY_ALLOC_ROUNDS rounds: churn_bytes allocates eight bytes objects of PY_BLOCK bytes
# and drops them, grow_cache keeps one; then "truth CHURN GROW" (the bytes each
# allocated: sys.getsizeof, the object's header with its bytes) and "done". The
# interpreter's warm-up runs both once before "ready".
PY_ALLOC_ROUNDS = 8000
PY_ALLOC = r"""
import signal
import sys

CACHE = []
go = False


def on_usr1(signum, frame):
    global go
    go = True


def churn_bytes():
    for _ in range(8):
        b = bytes(BLOCK)
        del b


def grow_cache():
    CACHE.append(bytes(BLOCK))


signal.signal(signal.SIGUSR1, on_usr1)
churn_bytes()
grow_cache()
CACHE.clear()
print("ready", flush=True)
while not go:
    signal.pause()
for _ in range(ROUNDS):
    churn_bytes()
    grow_cache()
size = sys.getsizeof(bytes(BLOCK))
print("truth", ROUNDS * 8 * size, ROUNDS * size, flush=True)
print("done", flush=True)
while True:
    signal.pause()
""".replace("ROUNDS", str(PY_ALLOC_ROUNDS)).replace("BLOCK", str(PY_BLOCK))

# Java: one method allocates 64 KiB arrays, another 64-byte ones, 1:1 in calls (about
# 820:1 in bytes, with the arrays' 16-byte headers): the first must be the top allocator
# by bytes. Each array is stored in a static field: an array nothing reads escapes
# nowhere, and C2 removes its allocation altogether (the earlier version of this app
# allocated nothing once compiled: its heap did not grow, and no sampler could see it).
# Round N of JAVA_ROUNDS calls each starts when /tmp/chain-go-N exists in the app's
# /tmp (the test creates it once the profile is recording) and ends with "done N";
# with the argument "exit" the JVM exits after round 1. Named Chain for build_java.
JAVA_ROUNDS = 20_000
JAVA_BIG_BYTES = 64 * 1024 + 16
JAVA_SMALL_BYTES = 64 + 16
JAVA_ALLOC = r"""
import java.io.File;
public class Chain {
    static Object big, small;
    static void bigAllocator() { big = new byte[64 * 1024]; }
    static void smallAllocator() { small = new byte[64]; }
    public static void main(String[] a) throws Exception {
        System.out.println("ready");
        for (int n = 1; ; n++) {
            File go = new File("/tmp/chain-go-" + n);
            while (!go.exists()) Thread.sleep(10);
            for (int i = 0; i < ROUNDS; i++) { bigAllocator(); smallAllocator(); }
            System.out.println("done " + n);
            if (a.length > 0 && a[0].equals("exit")) System.exit(0);
        }
    }
}
""".replace("ROUNDS", str(JAVA_ROUNDS))
