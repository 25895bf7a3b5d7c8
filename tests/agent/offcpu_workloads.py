"""Off-CPU workloads blocking 9:1 in two known functions through the usual doors:
libc (C), the interpreter and libc (Python), Go's own system calls (Go).

Each spends ~9 ms blocked in a "disk" function and ~1 ms in a "lock" function per
loop: an off-CPU profile must name both and give the first 85-95% of their time.
"""

from __future__ import annotations

# The program, as a user would write it: built -O1 -g -fno-omit-frame-pointer,
# blocking in libc's usleep (libc has no frame pointers, but has .eh_frame).
LIBC_C = r"""
#include <unistd.h>
__attribute__((noinline)) void wait_for_disk(void) { usleep(9000); __asm__ volatile(""); }
__attribute__((noinline)) void wait_for_lock(void) { usleep(1000); __asm__ volatile(""); }
int main(void) {
    for (;;) {
        wait_for_disk();
        wait_for_lock();
    }
}
"""
LIBC_C_FLAGS = ("-O1", "-g", "-fno-omit-frame-pointer")

# The main thread sleeps 9 ms in time.sleep, then waits 1 ms in a socket read that
# times out (no data comes): one wake-up each, like the C program, so scheduling
# latency on a busy machine weighs on both alike.
PY_BLOCKER = r"""
import socket, time

a, b = socket.socketpair()
a.settimeout(0.001)

def wait_for_disk():
    time.sleep(0.009)

def wait_for_lock():
    try:
        a.recv(1)
    except TimeoutError:
        pass

while True:
    wait_for_disk()
    wait_for_lock()
"""

# Go blocks the thread itself in a system call (syscall.Nanosleep; a time.Sleep would
# park the goroutine and leave the thread in the scheduler).
GO_BLOCKER = r"""
package main

import "syscall"

//go:noinline
func waitForDisk() {
	ts := syscall.NsecToTimespec(9000000)
	syscall.Nanosleep(&ts, nil)
}

//go:noinline
func waitForLock() {
	ts := syscall.NsecToTimespec(1000000)
	syscall.Nanosleep(&ts, nil)
}

func main() {
	for {
		waitForDisk()
		waitForLock()
	}
}
"""
