"""The webhook under test: one `python -m webhook` process per session, real TLS.

Certificates come from certs/ (`ensure_local_certs`) and are published the way the
kubelet projects a Secret (timestamped dir, ``..data`` symlink, ``tls.crt ->
..data/tls.crt``), so the rotation test swaps them exactly as a Secret update does.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from certs import LocalCertPaths, ensure_local_certs

ROOT = Path(__file__).resolve().parents[2]
OWN_NAMESPACE = "tracecar-system"


def publish(src: LocalCertPaths, secret_dir: Path) -> None:
    """Project cert and key into `secret_dir` like the kubelet: atomic ..data swap."""
    secret_dir.mkdir(parents=True, exist_ok=True)
    stamp = secret_dir / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    stamp.mkdir()
    shutil.copy(src.cert, stamp / "tls.crt")
    shutil.copy(src.key, stamp / "tls.key")
    data = secret_dir / "..data"
    old = data.resolve() if data.is_symlink() else None
    tmp = secret_dir / "..data_tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(stamp.name)
    os.replace(tmp, data)
    for name in ("tls.crt", "tls.key"):
        if not (secret_dir / name).is_symlink():
            (secret_dir / name).symlink_to(f"..data/{name}")
    if old is not None and old != stamp:
        shutil.rmtree(old)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Webhook:
    url: str
    port: int
    ca: Path
    src_dir: Path
    secret_dir: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.ssl_context(), timeout=10, **kw)  # type: ignore[arg-type]

    def served_cert(self, host: str = "localhost") -> bytes:
        """The DER certificate a new TLS connection gets."""
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw,
            self.ssl_context().wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der

    def rotate(self) -> LocalCertPaths:
        """A new serving certificate from the same CA, published like a Secret update."""
        paths = ensure_local_certs(
            self.src_dir, dns_names=["localhost"], ip_addresses=["127.0.0.1"], rotate=True
        )
        publish(paths, self.secret_dir)
        return paths


@pytest.fixture(scope="session")
def webhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    base = tmp_path_factory.mktemp("webhook")
    src = base / "certs"
    paths = ensure_local_certs(src, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    secret = base / "secret"
    publish(paths, secret)
    port = free_port()
    env = {
        **os.environ,
        "TRACECAR_WEBHOOK_CERT_FILE": str(secret / "tls.crt"),
        "TRACECAR_WEBHOOK_KEY_FILE": str(secret / "tls.key"),
        "TRACECAR_WEBHOOK_HOST": "127.0.0.1",
        "TRACECAR_WEBHOOK_PORT": str(port),
        "TRACECAR_WEBHOOK_NAMESPACE": OWN_NAMESPACE,
        "TRACECAR_WEBHOOK_CERT_RELOAD_INTERVAL_S": "0.5",
    }
    log = base / "webhook.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "webhook"], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    hook = Webhook(
        url=f"https://localhost:{port}",
        port=port,
        ca=paths.ca_cert,
        src_dir=src,
        secret_dir=secret,
        log=log,
        proc=proc,
    )
    try:
        deadline = time.monotonic() + 20
        with hook.client() as c:
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"webhook exited {proc.returncode}:\n{log.read_text()}")
                try:
                    if c.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"webhook did not come up:\n{log.read_text()}")
                time.sleep(0.1)
        yield hook
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="session")
def client(webhook: Webhook) -> Iterator[httpx.Client]:
    with webhook.client() as c:
        yield c
