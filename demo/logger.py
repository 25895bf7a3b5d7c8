"""tracecar demo: a Python app logging through LTTng (``lttngust``).

Python's LTTng agent registers with the session daemon only if the daemon is up when
``lttngust`` is imported. In the injected pod the daemon is started by the tracecar
agent sidecar, which may come up after this container (always so in classic,
non-native sidecar mode), so wait for the daemon's agent port file in the shared
/var/run/lttng first. Then log one INFO record every 200 ms on the
``tracecar.demo`` logger: enable the python domain event ``tracecar.demo`` to see them.
"""

import logging
import os
import sys
import time

PORT_FILE = "/var/run/lttng/agent.port"
WAIT_S = float(os.environ.get("TRACECAR_DEMO_WAIT_S", "300"))


def main() -> None:
    deadline = time.monotonic() + WAIT_S
    while not os.path.exists(PORT_FILE):
        if time.monotonic() > deadline:
            print(f"no LTTng session daemon ({PORT_FILE}) after {WAIT_S:.0f} s", file=sys.stderr)
            sys.exit(1)
        time.sleep(0.2)
    import lttngust  # noqa: F401  (registers with the session daemon on import)

    # lttngust's handler sits on the root logger; the records go to LTTng only (stdout
    # gets this one line, which the e2e test waits for).
    log = logging.getLogger("tracecar.demo")
    log.setLevel(logging.INFO)
    print(f"lttngust imported: registered with the session daemon ({PORT_FILE})", flush=True)
    n = 0
    while True:
        log.info("tick %d", n)
        n += 1
        time.sleep(0.2)


if __name__ == "__main__":
    main()
