"""Local mode: PEM files in a directory, written atomically, idempotent, usable for real TLS."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs import LocalCertPaths, ensure_local_certs

ROOT = Path(__file__).resolve().parents[2]


def _snapshot(d: Path) -> dict[str, tuple[bytes, int, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns) for p in d.iterdir()}


def test_creates_ca_cert_and_key_with_safe_modes(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    paths = ensure_local_certs(out, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    assert paths == LocalCertPaths(
        ca_cert=out / "ca.crt", cert=out / "tls.crt", key=out / "tls.key"
    )
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    for name, mode in [
        ("tls.key", 0o600),
        ("ca.key", 0o600),
        ("tls.crt", 0o644),
        ("ca.crt", 0o644),
    ]:
        assert stat.S_IMODE((out / name).stat().st_mode) == mode, name
    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    assert key.public_key() == cert.public_key()


def test_rerun_changes_nothing(tmp_path: Path) -> None:
    ensure_local_certs(tmp_path, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    before = _snapshot(tmp_path)
    ensure_local_certs(tmp_path, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    # Same bytes, same inodes, same mtimes: nothing was rewritten.
    assert _snapshot(tmp_path) == before


def test_rotate_keeps_the_ca_and_replaces_cert_and_key(tmp_path: Path) -> None:
    paths = ensure_local_certs(tmp_path, dns_names=["localhost"])
    ca, cert, key = (p.read_bytes() for p in (paths.ca_cert, paths.cert, paths.key))
    ensure_local_certs(tmp_path, dns_names=["localhost"], rotate=True)
    assert paths.ca_cert.read_bytes() == ca
    assert paths.cert.read_bytes() != cert and paths.key.read_bytes() != key
    new = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    new.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))


def test_a_new_name_reissues_the_cert_from_the_same_ca(tmp_path: Path) -> None:
    paths = ensure_local_certs(tmp_path, dns_names=["localhost"])
    ca, cert = paths.ca_cert.read_bytes(), paths.cert.read_bytes()
    ensure_local_certs(tmp_path, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    assert paths.ca_cert.read_bytes() == ca and paths.cert.read_bytes() != cert


def test_renews_when_a_third_of_the_lifetime_is_left(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    month = dt.timedelta(days=30)
    paths = ensure_local_certs(tmp_path, dns_names=["localhost"], now=now, serving_validity=month)
    first = paths.cert.read_bytes()
    ensure_local_certs(tmp_path, dns_names=["localhost"], now=now + dt.timedelta(days=19))
    assert paths.cert.read_bytes() == first  # 11 of 30 days left: more than a third
    ensure_local_certs(tmp_path, dns_names=["localhost"], now=now + dt.timedelta(days=21))
    assert paths.cert.read_bytes() != first  # 9 of 30 days left


def test_a_deleted_key_is_replaced_with_a_matching_pair(tmp_path: Path) -> None:
    paths = ensure_local_certs(tmp_path, dns_names=["localhost"])
    paths.key.unlink()
    ensure_local_certs(tmp_path, dns_names=["localhost"])
    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    assert key.public_key() == cert.public_key()


def test_readers_never_see_a_partial_file_during_rotations(tmp_path: Path) -> None:
    paths = ensure_local_certs(tmp_path, dns_names=["localhost"])
    stop = threading.Event()
    bad: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            for p in (paths.cert, paths.key):
                data = p.read_bytes()
                reads += 1
                if not (data.startswith(b"-----BEGIN") and data.rstrip().endswith(b"-----")):
                    bad.append(f"{p.name}: {len(data)} bytes")

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(30):
            ensure_local_certs(tmp_path, dns_names=["localhost"], rotate=True)
    finally:
        stop.set()
        t.join()
    assert reads > 0 and bad == []
    # No temporary files are left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, LocalCertPaths]]:
    """A one-shot TLS server on 127.0.0.1 serving the generated certificate."""
    paths = ensure_local_certs(tmp_path, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(paths.cert, paths.key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"hello")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield port, paths
    listener.close()
    t.join(timeout=5)


def test_a_tls_client_trusting_only_the_ca_accepts_the_server(
    tls_server: tuple[int, LocalCertPaths],
) -> None:
    port, paths = tls_server
    client = ssl.create_default_context(cafile=str(paths.ca_cert))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        client.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.recv(5) == b"hello"
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "certs", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_cli_local_writes_files_and_reports_them(tmp_path: Path) -> None:
    done = _cli("local", "--out-dir", str(tmp_path), "--dns", "localhost", "--ip", "127.0.0.1")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["cert"] == str(tmp_path / "tls.crt")
    assert (tmp_path / "tls.key").exists()


def test_cli_refuses_bad_names_with_exit_2(tmp_path: Path) -> None:
    done = _cli("local", "--out-dir", str(tmp_path), "--dns", "not a name")
    assert done.returncode == 2
    assert "not a DNS name" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "tls.crt").exists()


def test_concurrent_runs_agree_on_one_matching_set(tmp_path: Path) -> None:
    # Several processes starting at once (test workers, a script and a test) must end
    # with one CA and a cert/key pair that match, whoever wins.
    script = (
        "import sys; from pathlib import Path; from certs import ensure_local_certs;"
        "ensure_local_certs(Path(sys.argv[1]), dns_names=['localhost'])"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT) for _ in range(4)
    ]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    cert = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    key = serialization.load_pem_private_key((tmp_path / "tls.key").read_bytes(), password=None)
    assert key.public_key() == cert.public_key()
    cert.verify_directly_issued_by(
        x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    )


def test_cli_reports_an_unwritable_directory_with_exit_1(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    done = _cli("local", "--out-dir", str(blocker / "certs"), "--dns", "localhost")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and str(blocker) in done.stderr
