"""Local mode: the CA and serving certificate as PEM files in one directory.

Owns the file layout (`ca.crt`, `ca.key`, `tls.crt`, `tls.key`) and atomic writes:
every file is written to a temporary file in the same directory, flushed, given its
final mode (0600 for keys, 0644 for certificates) and renamed over the old one, so a
reader never sees a half-written file. On rotation the new key is written before the
new certificate: a server that reloads when `tls.crt` changes then finds the matching
key already in place (a reader that still catches a mismatched pair should retry).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from certs import _pki

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CERT = "tls.crt"
KEY = "tls.key"


@dataclass(frozen=True)
class LocalCertPaths:
    """Where the local certificates are: the CA to trust, the server's cert and key."""

    ca_cert: Path
    cert: Path
    key: Path


def atomic_write(path: Path, data: bytes, *, mode: int) -> None:
    """Replace `path` with `data` in one rename; the file has `mode` from its first byte."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # Make the rename itself durable, so a crash cannot bring back the old file.
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def read_material(out_dir: Path) -> _pki.Material | None:
    """What the directory holds now, or None when it has no CA at all."""
    ca_bundle = _read(out_dir / CA_CERT)
    if not ca_bundle:
        return None
    return _pki.Material(
        ca_bundle=ca_bundle,
        ca_key=_read(out_dir / CA_KEY),
        cert=_read(out_dir / CERT),
        key=_read(out_dir / KEY),
    )


def write_material(
    out_dir: Path, material: _pki.Material, *, previous: _pki.Material | None
) -> None:
    """Write the files that differ from `previous`: keys before certificates."""
    order = (
        (CA_KEY, material.ca_key, 0o600, previous.ca_key if previous else None),
        (CA_CERT, material.ca_bundle, 0o644, previous.ca_bundle if previous else None),
        (KEY, material.key, 0o600, previous.key if previous else None),
        (CERT, material.cert, 0o644, previous.cert if previous else None),
    )
    for name, data, mode, old in order:
        if data != old:
            atomic_write(out_dir / name, data, mode=mode)


def ensure_local_certs(
    out_dir: Path,
    *,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str] = (),
    rotate: bool = False,
    now: dt.datetime | None = None,
    serving_validity: dt.timedelta = _pki.SERVING_VALIDITY,
) -> LocalCertPaths:
    """Make sure `out_dir` holds a CA and a serving certificate valid for the names.

    Creates what is missing, renews what is due (a third of the lifetime left, names
    not covered, not signed by the CA), and leaves good files untouched, so re-running
    is cheap and changes nothing. `rotate=True` issues a new serving certificate and
    key from the same CA.
    """
    names = _pki.Names.of(dns_names=dns_names, ip_addresses=ip_addresses)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _locked(out_dir):
        current = read_material(out_dir)
        outcome = _pki.reconcile(
            current,
            names=names,
            now=now or _pki.utcnow(),
            rotate=rotate,
            serving_validity=serving_validity,
        )
        if outcome.changed:
            write_material(out_dir, outcome.material, previous=current)
    return paths_in(out_dir)


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """Serialise concurrent runs on one directory (two processes starting at once would
    otherwise each write their own CA and could leave a cert next to the other's key).
    The lock is on the directory itself, so no lock file is left behind."""
    fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def paths_in(out_dir: Path) -> LocalCertPaths:
    return LocalCertPaths(ca_cert=out_dir / CA_CERT, cert=out_dir / CERT, key=out_dir / KEY)
