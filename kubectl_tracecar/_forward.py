"""Reaching an agent: ``kubectl port-forward`` to a free local port, torn down after.

The plugin runs under kubectl, so kubectl is there, with the user's credentials and
the kubelet's real streaming path (the same one ``kubectl port-forward`` users take).
It binds a free port itself (``:PORT``) and prints which; we read that line, use
the port, and stop the forwarder (terminate, then kill, always reaped).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from kubectl_tracecar._kube import Connection
from kubectl_tracecar.errors import Forbidden, PluginError

_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) ->")
START_TIMEOUT_S = 30.0


def kubectl_binary() -> str:
    """``$TRACECAR_KUBECTL``, else the kubectl that runs us (on PATH)."""
    explicit = os.environ.get("TRACECAR_KUBECTL")
    found = explicit or shutil.which("kubectl")
    if not found:
        raise PluginError(
            "kubectl is not on PATH: the plugin port-forwards through it",
            hint="install kubectl, or set TRACECAR_KUBECTL to its path",
        )
    return found


def forward_argv(conn: Connection, pod: str, port: int) -> list[str]:
    argv = [kubectl_binary()]
    if conn.kubeconfig:
        argv.append(f"--kubeconfig={conn.kubeconfig}")
    if conn.context:
        argv.append(f"--context={conn.context}")
    if conn.as_user:
        argv.append(f"--as={conn.as_user}")
    argv += ["port-forward", "-n", conn.namespace, "--address=127.0.0.1", f"pod/{pod}", f":{port}"]
    return argv


@contextmanager
def port_forward(conn: Connection, pod: str, port: int) -> Iterator[str]:
    """Yields ``http://127.0.0.1:LOCAL`` forwarding to ``port`` in the pod."""
    proc = subprocess.Popen(
        forward_argv(conn, pod, port),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Its own session: a Ctrl-C at the terminal goes to the plugin, which then still
        # needs the forward to stop the probe or session it started.
        start_new_session=True,
    )
    found: list[int] = []
    ready = threading.Event()
    err: list[str] = []

    def read_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = _FORWARDING.search(line)
            if m and not found:
                found.append(int(m.group(1)))
                ready.set()
        ready.set()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if len(err) < 50:
                err.append(line.rstrip())

    readers = [
        threading.Thread(target=read_stdout, daemon=True),
        threading.Thread(target=read_stderr, daemon=True),
    ]
    for t in readers:
        t.start()
    try:
        ready.wait(START_TIMEOUT_S)
        if not found:
            proc.terminate()
            proc.wait(timeout=5)
            for t in readers:
                t.join(timeout=2)
            detail = "; ".join(err[-3:]) or f"no answer in {START_TIMEOUT_S:g}s"
            kind = Forbidden if "forbidden" in detail.lower() else PluginError
            raise kind(
                f"port-forward to pod/{pod}:{port} failed: {detail}",
                hint="you need RBAC verb 'create' on 'pods/portforward' in the pod's namespace",
            )
        yield f"http://127.0.0.1:{found[0]}"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
