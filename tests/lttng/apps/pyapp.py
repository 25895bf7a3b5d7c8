"""Test workload: Python `logging` through LTTng's agent (Debian's python3-lttngust).

usage: /usr/bin/python3 pyapp.py N
Each SIGUSR1 logs one batch on logger "tracecar.py": N INFO records "item <i>"
and N // 10 WARNING records "warn <i>"; then it writes /tmp/done-B. SIGTERM exits.
"""

import logging
import signal
import sys

# Block before lttngust starts its threads, so only sigwait() sees the signals.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})

import lttngust  # noqa: E402,F401  (registers with the session daemon at import)

n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
log = logging.getLogger("tracecar.py")
log.setLevel(logging.DEBUG)
print("ready", flush=True)
batch = 0
while True:
    sig = signal.sigwait({signal.SIGUSR1, signal.SIGTERM})
    if sig == signal.SIGTERM:
        break
    batch += 1
    for i in range(n):
        log.info("item %d", i)
        if i % 10 == 0:
            log.warning("warn %d", i)
    with open(f"/tmp/done-{batch}", "w") as f:
        f.write(f"{n}\n")
