"""``python -m agent`` / ``tracecar-agent``: serve the agent with uvicorn.

``tracecar-agent healthcheck`` is the exec probe of the sidecar: it exits 0 when
``http://127.0.0.1:$TRACECAR_AGENT_PORT/healthz`` answers 200, else 1 (saying why).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import socket
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uvicorn

DEFAULT_PORT = 7780


def healthcheck(*, timeout: float = 3.0, wait_s: float = 0.0) -> int:
    """0 if the agent on this host's loopback answers /healthz with 200, else 1.

    Light on purpose: the kubelet runs it every second while the pod starts (the native
    sidecar's startup probe gates the app's start) and every 10 s after, so it is the
    idle agent's main CPU cost. It reads the one setting it needs, the port, from the
    same variable the settings do, without importing pydantic (~4x the start-up)."""
    raw = os.environ.get("TRACECAR_AGENT_PORT", str(DEFAULT_PORT))
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        print(f"unhealthy: TRACECAR_AGENT_PORT={raw!r} is not a port (1-65535)", file=sys.stderr)
        return 1
    url = f"http://127.0.0.1:{int(raw)}/healthz"
    # --wait: the native sidecar's startup probe. It keeps asking until the agent
    # answers (or the time is up), so the app starts as soon as the agent serves, not at
    # the next probe period; one exec, not one Python start a second competing with the
    # agent's own start-up for the pod's CPU.
    deadline = time.monotonic() + wait_s
    while True:
        why = _get_healthz(int(raw), timeout=timeout)
        if why is None:
            return 0
        if time.monotonic() >= deadline:
            print(f"unhealthy: {url}: {why}", file=sys.stderr)
            return 1
        time.sleep(0.05)


def _get_healthz(port: int, *, timeout: float) -> str | None:
    """None if GET /healthz answers 200, else why not. A plain socket: urllib and
    http.client import ssl and email, a third of the probe's CPU."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            conn.sendall(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            status = conn.makefile("rb").readline(256).split()
    except OSError as e:
        return str(e)
    if len(status) >= 2 and status[1] == b"200":
        return None
    return f"answered {b' '.join(status[1:]).decode(errors='replace') or 'nothing'}"


def _uvicorn() -> tuple[type[uvicorn.Config], type[uvicorn.Server]]:
    """uvicorn's ``Config`` and ``Server``, without its package ``__init__``.

    That ``__init__`` also imports uvicorn's command line (click) and its reload and
    multiprocess supervisors (multiprocessing): 1.6 MB of the idle agent's RSS (measured), 1/37
    of its budget, for code the agent never runs. The package is registered as an empty
    module (``__path__`` set, nothing executed), its serving modules are imported, and
    the names its own modules import from the package (``from uvicorn import Config``,
    in its lifespan) are put back. If uvicorn's layout ever changes, the plain import
    is used instead (tests/agent/test_healthcheck.py pins the light path)."""
    if "uvicorn" not in sys.modules:
        spec = importlib.util.find_spec("uvicorn")
        if spec is not None and spec.submodule_search_locations is not None:
            package = importlib.util.module_from_spec(spec)
            sys.modules["uvicorn"] = package
            try:
                version = importlib.import_module("uvicorn._version")
                config = importlib.import_module("uvicorn.config")
                server = importlib.import_module("uvicorn.server")
                for name, value in (
                    ("__version__", version.__version__),
                    ("Config", config.Config),
                    ("Server", server.Server),
                ):
                    setattr(package, name, value)
                return config.Config, server.Server
            except (ImportError, AttributeError):
                for name in [m for m in sys.modules if m == "uvicorn" or m.startswith("uvicorn.")]:
                    del sys.modules[name]
    full = importlib.import_module("uvicorn")
    return full.Config, full.Server


def serve() -> None:
    # Imported here so the healthcheck stays light (an exec probe runs it every few
    # seconds). Only what serving needs: the app itself loads behind the port (agent.boot).
    config_type, server_type = _uvicorn()

    from agent.boot import Boot, tune_malloc
    from agent.settings import get_settings
    from servicelog import AccessLog, configure

    tune_malloc()

    settings = get_settings()
    # Read once (cached above); not handed down to perf, bpftrace, lttng-sessiond...:
    # the children need no token, and a long-running one would hold it in its env.
    os.environ.pop("TRACECAR_AGENT_TOKEN", None)
    configure(level=settings.log_level, fmt=settings.log_format)
    server: uvicorn.Server | None = None

    def request_exit() -> None:
        # An idle agent ends itself as a clean exit (status 0, "Completed" in the pod),
        # not by a signal that uvicorn would re-raise after its graceful shutdown.
        if server is not None:
            server.should_exit = True

    boot = Boot(settings, request_exit=request_exit)
    server = server_type(
        config_type(
            # Outermost, so the access line has the status and time of every answer.
            AccessLog(boot, logger="agent.access"),
            host=settings.host,
            port=settings.port,
            log_config=None,  # our handler, installed above, formats uvicorn's lines too
            access_log=False,  # AccessLog writes the access lines, in our format
            timeout_graceful_shutdown=15,
        )
    )
    server.run()
    if boot.exit_status:
        sys.exit(boot.exit_status)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tracecar-agent", description=__doc__)
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=["serve", "healthcheck"],
        help="serve (default) or healthcheck (exit 0 if /healthz answers 200)",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="healthcheck: keep asking for this long until the agent answers",
    )
    args = parser.parse_args(argv)
    if args.command == "healthcheck":
        sys.exit(healthcheck(wait_s=max(0.0, min(args.wait, 60.0))))
    serve()


if __name__ == "__main__":
    main()
