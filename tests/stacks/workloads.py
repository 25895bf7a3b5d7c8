"""Processes blocked in a known function, one per runtime, for the stack snapshot tests.

Each prints ``ready`` once it is about to block, so a test knows the stack it will
see. Built at test time (gcc, javac, go), then copied into a container's own /srv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.interpreters import PY312

__all__ = ["PY312", "PY_BLOCKED", "build_c", "build_go", "build_java"]

# main -> wait_here -> time.sleep, and a helper thread in worker_loop.
PY_BLOCKED = r"""
import threading, time

def worker_loop():
    while True:
        time.sleep(100)

def wait_here():
    print("ready", flush=True)
    time.sleep(100000)

def main():
    threading.Thread(target=worker_loop, name="helper", daemon=True).start()
    wait_here()

main()
"""

# main -> blocked_here -> pause(); argv[1] more threads asleep in worker (a process
# that takes gdb a while: the "exits mid-snapshot" and timeout tests).
C_BLOCKED = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

__attribute__((noinline)) void *worker(void *arg) {
    for (;;) sleep(1000);
    return arg;
}

__attribute__((noinline)) void blocked_here(void) {
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 0;
    for (int i = 0; i < n; i++) {
        pthread_t t;
        pthread_create(&t, 0, worker, 0);
    }
    blocked_here();
    return 0;
}
"""

# A thread (not the main one) asleep in Sleeper.waitHere.
JAVA_SLEEPER = r"""
public class Sleeper {
    static void waitHere() throws InterruptedException {
        Thread.sleep(1000000000L);
    }

    public static void main(String[] args) throws Exception {
        Thread t = new Thread(() -> {
            try { waitHere(); } catch (InterruptedException e) { }
        }, "sleeper-thread");
        t.start();
        System.out.println("ready");
        System.out.flush();
        t.join();
    }
}
"""

# main.main -> main.blockedHere -> a read(2) on a pipe nobody writes: the goroutine
# stays on its thread (a syscall), so the thread's stack shows it. init locks the main
# goroutine to the main thread (the documented idiom): else the scheduler may run it
# on another thread before it blocks (seen under load).
GO_BLOCKED = r"""
package main

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
)

func init() { runtime.LockOSThread() }

//go:noinline
func blockedHere() {
	var fds [2]int
	if err := syscall.Pipe(fds[:]); err != nil {
		panic(err)
	}
	buf := make([]byte, 1)
	fmt.Fprintln(os.Stdout, "ready")
	syscall.Read(fds[0], buf)
}

func main() {
	blockedHere()
}
"""


def build_c(out: Path) -> Path:
    src = out.with_suffix(".c")
    src.write_text(C_BLOCKED)
    subprocess.run(
        ["gcc", "-O0", "-g", "-fno-omit-frame-pointer", "-pthread", "-o", str(out), str(src)],
        check=True,
        timeout=60,
    )
    return out


def build_java(dest: Path) -> Path:
    """Sleeper.class in ``dest``."""
    (dest / "Sleeper.java").write_text(JAVA_SLEEPER)
    subprocess.run(["javac", "-d", str(dest), str(dest / "Sleeper.java")], check=True, timeout=120)
    return dest / "Sleeper.class"


def go_tool() -> str | None:
    return shutil.which("go") or (
        "/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None
    )


def build_go(dest: Path) -> Path:
    """A single main.go, no module: ``go build`` with the local toolchain only."""
    go = go_tool()
    assert go is not None, "no Go toolchain (go on PATH or /usr/local/go/bin/go)"
    (dest / "main.go").write_text(GO_BLOCKED)
    out = dest / "goblocked"
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    subprocess.run(
        [go, "build", "-o", str(out), "main.go"], check=True, timeout=300, cwd=dest, env=env
    )
    return out
