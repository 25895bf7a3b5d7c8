"""Test workloads for the agent's integration tests: a C program with a known hot
and cold function (10:1), and a Python 3.12 program using the perf trampoline.

The C workload is compiled at test time (``gcc -O2 -fno-omit-frame-pointer``).
gcc removes pure work whose result is unused or hoists loop-invariant calls, so
the argument is ``volatile`` and every result is kept in a volatile sink.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

PY312 = "/root/.pyenv/versions/3.12.1/bin/python3.12"

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
