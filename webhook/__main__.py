"""``python -m webhook`` / ``tracecar-webhook``: serve the webhook over TLS with uvicorn."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import ssl
import sys
from collections.abc import Callable, Sequence

import uvicorn
from pydantic import ValidationError

from servicelog import AccessLog
from webhook.app import create_app
from webhook.logs import ACCESS_LOGGER, configure_logging, flush_logs, flush_periodically
from webhook.settings import Settings, get_settings
from webhook.tls import ReloadingTLS, limit_ssl_read_buffer


async def _serve(server: uvicorn.Server, tls: ReloadingTLS, interval_s: float) -> None:
    tasks = [asyncio.create_task(tls.watch(interval_s)), asyncio.create_task(flush_periodically())]
    try:
        await server.serve()
    finally:
        for task in tasks:
            task.cancel()
        flush_logs()


def _flush_then_die(sig: int, _frame: object) -> None:
    # uvicorn re-raises the SIGTERM or SIGINT that stopped it once it has shut down,
    # which would kill the process with the last half second of log lines still in the
    # buffer: flush them, then die of the signal as before.
    flush_logs()
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)


def build_server(settings: Settings, tls: ReloadingTLS) -> uvicorn.Server:
    def context(_config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return tls.context

    config = uvicorn.Config(
        AccessLog(create_app(settings), logger=ACCESS_LOGGER),
        host=settings.host,
        port=settings.port,
        ssl_context_factory=context,
        log_config=None,
        access_log=False,  # AccessLog writes the access lines, in our format
        server_header=False,
        timeout_keep_alive=settings.keep_alive_s,
        lifespan="off",
    )
    return uvicorn.Server(config)


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv:
        print(
            "usage: python -m webhook  (settings: TRACECAR_WEBHOOK_* environment variables)",
            file=sys.stderr,
        )
        return 2
    try:
        settings = get_settings()
    except ValidationError as e:
        for err in e.errors():
            name = "TRACECAR_WEBHOOK_" + "_".join(str(p) for p in err["loc"]).upper()
            print(f"tracecar-webhook: {name}={err.get('input')!r}: {err['msg']}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if settings.cert_file is None or settings.key_file is None:
        print(
            "tracecar-webhook: set TRACECAR_WEBHOOK_CERT_FILE and TRACECAR_WEBHOOK_KEY_FILE "
            "(PEM files; `python -m certs local --out-dir DIR --dns localhost` makes some)",
            file=sys.stderr,
        )
        return 2
    try:
        tls = ReloadingTLS(cert_file=settings.cert_file, key_file=settings.key_file)
    except (OSError, ssl.SSLError) as e:
        print(f"tracecar-webhook: cannot load the certificate: {e}", file=sys.stderr)
        return 2
    limit_ssl_read_buffer()
    server = build_server(settings, tls)
    # Everything imported so far lives as long as the process: exempt it from the
    # cyclic GC, so full collections do not walk ~60k startup objects mid-request.
    gc.collect()
    gc.freeze()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _flush_then_die)
    asyncio.run(_serve(server, tls, settings.cert_reload_interval_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
