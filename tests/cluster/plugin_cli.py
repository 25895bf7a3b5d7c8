"""Running ``kubectl tracecar`` on the real cluster exactly as a user does: kubectl (the
cluster's own build) finds the plugin on PATH."""

from __future__ import annotations

import os
import subprocess

from devcluster import Layout
from tests.cluster import kube as K


def plugin_env(kube: K.Kube) -> dict[str, str]:
    """kubectl (the cluster's build) and the plugin on PATH, as after `pip install`."""
    lay = Layout.for_repo(K.REPO)
    return dict(
        os.environ,
        KUBECONFIG=str(kube.kubeconfig),
        PATH=f"{lay.run / 'bin'}:{K.REPO / '.venv' / 'bin'}:{os.environ['PATH']}",
    )


def tracecar(kube: K.Kube, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """`kubectl tracecar ...` exactly as a user types it: kubectl finds the plugin."""
    return subprocess.run(
        ["kubectl", "tracecar", "-n", K.NS, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=plugin_env(kube),
    )


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stderr}\n{res.stdout}"
    return res.stdout
