"""Fixtures of the cluster stage: a real single-node cluster (scripts/cluster up), the
images imported into it, and tracecar installed with `kubectl apply -k deploy/`.

Session-scoped: the cluster comes up once, and `scripts/cluster down` runs at the end
(set TRACECAR_KEEP_CLUSTER=1 to keep it for poking at by hand)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from devcluster import Layout
from devcluster._host import leftovers
from tests.cluster import kube as K

CLUSTER = K.REPO / "scripts" / "cluster"


def _run(argv: list[str], timeout: float) -> None:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=K.REPO)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed:\n{res.stderr[-4000:]}{res.stdout[-2000:]}")


@pytest.fixture(scope="session")
def cluster() -> Iterator[K.Kube]:
    if os.geteuid() != 0:
        pytest.fail("the cluster stage needs root")
    lay = Layout.for_repo(K.REPO)
    _run([str(CLUSTER), "up"], timeout=3600)
    env = dict(os.environ, TRACECAR_IMAGE_TAG=K.TAG)
    res = subprocess.run(
        [str(K.REPO / "scripts" / "images"), "agent", "agent-core", "webhook", "certs", "demo"],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=K.REPO,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    _run(
        [
            str(CLUSTER),
            "load",
            K.AGENT_IMAGE,
            K.AGENT_CORE_IMAGE,
            K.WEBHOOK_IMAGE,
            K.CERTS_IMAGE,
            K.DEMO_IMAGE,
        ],
        timeout=900,
    )
    yield K.Kube(lay.kubeconfig, lay.bin / "kubectl")
    if not os.environ.get("TRACECAR_KEEP_CLUSTER"):
        _run([str(CLUSTER), "down"], timeout=600)
        assert leftovers(lay) == [], "scripts/cluster down left things behind"


@pytest.fixture(scope="session")
def installed(cluster: K.Kube) -> K.Kube:
    """tracecar installed exactly as docs/install.md says, and a privileged namespace."""
    K.install(cluster)
    return cluster
