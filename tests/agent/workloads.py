"""Test workloads for the agent's integration tests: a C program with a known hot
and cold function (10:1), and a Python 3.12 program using the perf trampoline.

The C workload is compiled at test time (``gcc -O2 -fno-omit-frame-pointer``).
gcc removes pure work whose result is unused or hoists loop-invariant calls, so
the argument is ``volatile`` and every result is kept in a volatile sink.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

HOTCOLD_C = r"""
#include <stdint.h>
volatile uint64_t sink;

__attribute__((noinline)) uint64_t hot_function(volatile uint64_t n) {
    uint64_t s = 0;
    for (uint64_t i = 0; i < n; i++) s += (i * i) ^ (s >> 3);
    return s;
}

__attribute__((noinline)) uint64_t cold_function(volatile uint64_t n) {
    uint64_t s = 0;
    for (uint64_t i = 0; i < n; i++) s += (i * i) ^ (s >> 3);
    return s;
}

int main(void) {
    for (;;) {
        sink += hot_function(10000000);
        sink += cold_function(1000000);
    }
}
"""

PY_WORK = r"""
import sys

def hot_python_function(n):
    s = 0
    for i in range(n):
        s += i * i
    return s

def cold_python_function(n):
    s = 0
    for i in range(n):
        s += i * i
    return s

def main():
    total = 0
    while True:
        total += hot_python_function(200000)
        total += cold_python_function(20000)

main()
"""

# Burns CPU for a while, then exits: for "a pid exiting mid-recording".
SHORT_C = r"""
#include <stdint.h>
#include <time.h>
volatile uint64_t sink;
int main(int argc, char **argv) {
    time_t end = time(0) + (argc > 1 ? argv[1][0] - '0' : 1);
    while (time(0) < end) for (volatile int i = 0; i < 100000; i++) sink += i;
    return 0;
}
"""


def compile_c(source: str, out: Path) -> Path:
    src = out.with_suffix(".c")
    src.write_text(source)
    subprocess.run(
        ["gcc", "-O2", "-g", "-fno-omit-frame-pointer", "-o", str(out), str(src)],
        check=True,
        timeout=60,
    )
    return out


# Two functions whose shares swap on SIGUSR1 (9:1, then 1:9, then back): a known shift
# between two recordings (differential flame graphs) or two phases (the recorder).
SHIFT_C = r"""
#include <signal.h>
#include <stdint.h>
volatile uint64_t sink;
volatile sig_atomic_t phase;
static void flip(int sig) { (void)sig; phase = !phase; }

__attribute__((noinline)) uint64_t alpha_function(volatile uint64_t n) {
    uint64_t s = 0;
    for (uint64_t i = 0; i < n; i++) s += (i * i) ^ (s >> 3);
    return s;
}

__attribute__((noinline)) uint64_t beta_function(volatile uint64_t n) {
    uint64_t s = 0;
    for (uint64_t i = 0; i < n; i++) s += (i * i) ^ (s >> 5);
    return s;
}

int main(void) {
    signal(SIGUSR1, flip);
    for (;;) {
        sink += alpha_function(phase ? 300000 : 2700000);
        sink += beta_function(phase ? 2700000 : 300000);
    }
}
"""


# Off CPU 9:1 in two known functions, on an idle machine: a worker thread sleeps 9 ms
# in sleep_function, then waits about 1 ms in lock_function for a mutex a holder thread
# keeps for 1 ms. On a busy one each wake-up also waits for a CPU, and lock_function
# waits for two (the holder's, then its own), so the split moves: the worker times
# both functions itself, and SIGUSR1 number N makes it write its totals so far
# ("sleep_ns lock_ns") to /tmp/truth-N, the ground truth a profile is held to.
# The libc calls sit behind a noinline inner function each: libc has no frame
# pointers, so a frame-pointer unwind from inside it skips its caller's frame.
OFFCPU_C = r"""
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <time.h>
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static sem_t go, taken;
static volatile sig_atomic_t asked;
static void ask(int sig) { (void)sig; asked++; }
static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}
static void nap(long ns) { struct timespec t = {0, ns}; nanosleep(&t, 0); }
__attribute__((noinline)) void sleep_inner(void) { nap(9000000); __asm__ volatile(""); }
__attribute__((noinline)) void sleep_function(void) { sleep_inner(); __asm__ volatile(""); }
__attribute__((noinline)) void lock_inner(void) {
    pthread_mutex_lock(&m);
    pthread_mutex_unlock(&m);
    __asm__ volatile("");
}
__attribute__((noinline)) void lock_function(void) {
    sem_post(&go);
    sem_wait(&taken);
    lock_inner();
    __asm__ volatile("");
}
__attribute__((noinline)) void *holder_thread(void *arg) {
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, 0); /* sem_wait would fail with EINTR */
    for (;;) {
        sem_wait(&go);
        pthread_mutex_lock(&m);
        sem_post(&taken);
        nap(1000000);
        pthread_mutex_unlock(&m);
    }
    return arg;
}
__attribute__((noinline)) void worker_loop(void) {
    long long in_sleep = 0, in_lock = 0;
    int written = 0;
    for (;;) {
        long long t0 = now_ns();
        sleep_function();
        long long t1 = now_ns();
        lock_function();
        long long t2 = now_ns();
        in_sleep += t1 - t0;
        in_lock += t2 - t1;
        if (asked != written) {
            char path[64];
            written = asked;
            snprintf(path, sizeof path, "/tmp/truth-%d", written);
            FILE *f = fopen(path, "w");
            if (f) { fprintf(f, "%lld %lld\n", in_sleep, in_lock); fclose(f); }
        }
    }
}
int main(void) {
    pthread_t h;
    sem_init(&go, 0, 0);
    sem_init(&taken, 0, 0);
    pthread_create(&h, 0, holder_thread, 0);
    signal(SIGUSR1, ask);
    worker_loop();
}
"""


# Idle (asleep) until SIGUSR1, then spins in spin_function for argv[1] seconds, then
# idles again: a CPU spike on demand, for triggers.
SPIKE_C = r"""
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
volatile uint64_t sink;
volatile sig_atomic_t go;
static void start(int sig) { (void)sig; go = 1; }

__attribute__((noinline)) void spin_function(double seconds) {
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        for (volatile int i = 0; i < 100000; i++) sink += i;
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 < seconds);
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 10;
    signal(SIGUSR1, start);
    for (;;) {
        while (!go) pause();
        go = 0;
        spin_function(seconds);
    }
}
"""


# main calls hot() directly three times for each call through cold(): a known split
# (3:1) between the chains main -> hot and main -> cold -> hot.
PY_CHAIN = r"""
import sys, time

def hot(n):
    s = 0
    for i in range(n):
        s += i * i
    return s

def cold(n):
    return hot(n)

def main():
    total = 0
    while True:
        total += hot(30000)
        total += hot(30000)
        total += hot(30000)
        total += cold(30000)

main()
"""


# The same 3:1 chain in Java. Inlining is turned off for Chain's methods on the command
# line (-XX:CompileCommand=dontinline,Chain::*): the JIT would fold hot into its callers.
JAVA_CHAIN = r"""
public class Chain {
    static volatile long sink;
    static long hot(long n) {
        long s = 0;
        for (long i = 0; i < n; i++) s += (i * i) ^ (s >>> 3);
        return s;
    }
    static long cold(long n) { return hot(n); }
    // The loop's body is a method of its own: main, never returning, stays interpreted
    // (its frame shows as "Interpreter"), work is compiled and named.
    static void work() {
        sink += hot(300000);
        sink += hot(300000);
        sink += hot(300000);
        sink += cold(300000);
    }
    public static void main(String[] args) {
        while (true) work();
    }
}
"""

NODE_CHAIN = r"""
let sink = 0;
function hot(n) {
    let s = 0;
    for (let i = 0; i < n; i++) s += (i * i) ^ (s >>> 3);
    return s;
}
function cold(n) { return hot(n); }
function main() {
    for (;;) {
        sink += hot(300000);
        sink += hot(300000);
        sink += hot(300000);
        sink += cold(300000);
    }
}
main();
"""

GO_CHAIN = r"""
package main

var sink uint64

// hot calls finish so that it has a frame of its own: a frameless leaf function (no
// call, nothing on the stack) pushes no frame pointer, and frame-pointer stacks then
// skip its caller (said in the profile's notes for Go, and in docs/profiling.md).
//
//go:noinline
func hot(n uint64) uint64 {
	var s uint64
	for i := uint64(0); i < n; i++ {
		s += (i * i) ^ (s >> 3)
	}
	return finish(s)
}

//go:noinline
func finish(s uint64) uint64 { return s + 1 }

//go:noinline
func cold(n uint64) uint64 { return hot(n) }

func main() {
	for {
		sink += hot(3000000)
		sink += hot(3000000)
		sink += hot(3000000)
		sink += cold(3000000)
	}
}
"""


def build_java(source: str, out_dir: Path) -> Path:
    """Chain.class in ``out_dir``."""
    src = out_dir / "Chain.java"
    src.write_text(source)
    subprocess.run(["javac", "-d", str(out_dir), str(src)], check=True, timeout=120)
    return out_dir / "Chain.class"


def build_go(source: str, out: Path, *, ldflags: str | None = None) -> Path:
    """``source`` as a one-file module built to ``out`` (its sources in ``out``'s folder's
    ``gosrc``); ``ldflags`` "-s -w" builds it stripped."""
    src_dir = out.parent / "gosrc"
    src_dir.mkdir(exist_ok=True)
    (src_dir / "main.go").write_text(source)
    (src_dir / "go.mod").write_text("module chain\n\ngo 1.22\n")
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
    go = shutil.which("go") or "/usr/local/go/bin/go"
    flags = [f"-ldflags={ldflags}"] if ldflags else []
    subprocess.run(
        [go, "build", *flags, "-o", str(out), "."], cwd=src_dir, env=env, check=True, timeout=300
    )
    return out


def build_go_stripped(source: str, out: Path) -> Path:
    """``source`` built without its symbol table and DWARF (``-ldflags=-s -w``): names
    only from its .gopclntab, which the check below makes sure of."""
    build_go(source, out, ldflags="-s -w")
    sections = subprocess.run(
        ["readelf", "-S", str(out)], capture_output=True, text=True, timeout=60
    ).stdout
    assert ".symtab" not in sections and ".gopclntab" in sections, sections
    return out


LEAF_GO = r"""
package main

var sink uint64

// checksum is a frameless leaf: no call, nothing on the stack.
//
//go:noinline
func checksum(n uint64) uint64 {
	var s uint64
	for i := uint64(0); i < n; i++ {
		s += (i * i) ^ (s >> 3)
	}
	return s
}

//go:noinline
func verify(n uint64) uint64 { return checksum(n) + 1 }

// mix is inlined into hot: a frame of its own only through the pclntab's inline tree.
func mix(a, b uint64) uint64 { return (a * a) ^ (b >> 3) }

//go:noinline
func hot(n uint64) uint64 {
	var s uint64
	for i := uint64(0); i < n; i++ {
		s += mix(i, s)
	}
	return s
}

func main() {
	for {
		sink += checksum(3000000)
		sink += checksum(3000000)
		sink += checksum(3000000)
		sink += verify(3000000)
		sink += hot(3000000)
	}
}
"""


LEAF_C = r"""
#include <stdint.h>
volatile uint64_t sink;
/* A leaf: gcc gives it no frame even under -fno-omit-frame-pointer. */
__attribute__((noinline)) uint64_t checksum(uint64_t n) {
    uint64_t s = 0;
    for (uint64_t i = 0; i < n; i++) s += (i * i) ^ (s >> 3);
    return s;
}
__attribute__((noinline)) uint64_t verify(uint64_t n) { return checksum(n) + 1; }
int main(void) {
    volatile uint64_t n = 3000000;
    for (;;) {
        sink += checksum(n);
        sink += checksum(n);
        sink += checksum(n);
        sink += verify(n);
    }
}
"""


# Worker threads on demand, as a runtime starts and ends its workers: SIGUSR2 starts
# four (blocked on a pipe), SIGUSR1 ends them all (joined before the next signal).
# tests/agent/perf_start_race.py ends them while perf record -p is starting, in the
# window where perf 6.1 gives up (agent._proc.perf_lost_a_thread_at_start).
WORKERS_ON_DEMAND_C = r"""
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#define WORKERS 4
static int fds[2];

static void *worker(void *arg) {
    char c;
    (void)arg;
    (void)read(fds[0], &c, 1);
    return 0;
}

int main(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &set, 0);
    if (pipe(fds) != 0) return 1;
    pthread_t t[WORKERS];
    int running = 0;
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int sig = 0;
        sigwait(&set, &sig);
        if (sig == SIGUSR2 && !running) {
            for (int i = 0; i < WORKERS; i++) pthread_create(&t[i], 0, worker, 0);
            running = 1;
        } else if (sig == SIGUSR1 && running) {
            (void)!write(fds[1], "xxxx", WORKERS);
            for (int i = 0; i < WORKERS; i++) pthread_join(t[i], 0);
            running = 0;
        }
    }
}
"""
