"""Certificate rotation under load: the files change (kubelet-style ..data swap) while
clients send reviews continuously; nothing fails and new connections get the new cert."""

from __future__ import annotations

import os
import shutil
import ssl
import threading
import time
from pathlib import Path

import httpx

from certs import ensure_local_certs
from tests.webhook.conftest import Webhook
from tests.webhook.support import decode_patch, labelled, review
from webhook.tls import ReloadingTLS

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web"},
    "spec": {"containers": [{"name": "app", "image": "app:1"}]},
}


def der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def wait_served(webhook: Webhook, expected: bytes, *, host: str) -> None:
    deadline = time.monotonic() + 10
    while webhook.served_cert(host) != expected:
        assert time.monotonic() < deadline, f"new certificate not served to {host} within 10 s"
        time.sleep(0.1)


def test_rotation_under_load(webhook: Webhook) -> None:
    stop = threading.Event()
    done = {"ok": 0}
    failures: list[str] = []

    def load(keep_alive: bool) -> None:
        limits = httpx.Limits(max_keepalive_connections=1 if keep_alive else 0)
        with webhook.client(limits=limits) as c:
            while not stop.is_set():
                try:
                    r = c.post("/mutate", json=review(labelled(POD)))
                    if r.status_code != 200 or not decode_patch(r.json()):
                        failures.append(f"{r.status_code} {r.text[:200]}")
                    else:
                        done["ok"] += 1
                except httpx.HTTPError as e:
                    failures.append(repr(e))

    threads = [threading.Thread(target=load, args=(k,)) for k in (True, False)]
    for t in threads:
        t.start()
    try:
        first = webhook.served_cert()
        for _ in range(2):
            time.sleep(0.5)
            paths = webhook.rotate()
            new = der(paths.cert)
            assert new != first
            wait_served(webhook, new, host="localhost")  # with SNI
            wait_served(webhook, new, host="127.0.0.1")  # no SNI (IP address)
            first = new
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
    assert failures == []
    assert done["ok"] > 10
    assert "certificate reloaded" in webhook.log.read_text()


def test_half_rotated_files_keep_the_old_certificate(tmp_path: Path) -> None:
    """certs/ writes the new key before the new cert: in between, the pair does not
    match; the reloader keeps serving the old pair and picks up the new one after."""
    src = tmp_path / "src"
    first = ensure_local_certs(src, dns_names=["localhost"])
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(first.cert, served / "tls.crt")
    shutil.copy(first.key, served / "tls.key")
    tls = ReloadingTLS(cert_file=served / "tls.crt", key_file=served / "tls.key")
    old = tls.current
    assert tls.check() is False  # nothing changed

    second = ensure_local_certs(src, dns_names=["localhost"], rotate=True)
    shutil.copy(second.key, served / "tls.key.new")
    os.replace(served / "tls.key.new", served / "tls.key")  # key first...
    assert tls.check() is False
    assert tls.current is old
    shutil.copy(second.cert, served / "tls.crt.new")
    os.replace(served / "tls.crt.new", served / "tls.crt")  # ...then the cert
    assert tls.check() is True
    assert tls.current is not old
    assert tls.reloads == 1
    assert tls.check() is False
