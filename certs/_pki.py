"""Pure PKI: issue a CA and serving certificates, and decide when they must be renewed.

Owns the certificate *logic* and nothing else: no files, no Kubernetes. Both the local
mode (`certs._files`) and the cluster mode (`certs._cluster`) call `reconcile()`, which
takes what is stored now (or nothing) and returns what should be stored, with the
reasons for every change. Keys are ECDSA P-256 throughout.

Renewal rule (the issue's): a certificate is renewed when a third of its lifetime or
less is left, when it does not cover the requested names, when it was not issued by
the current CA, or when it is unreadable. The CA is renewed by the same lifetime
rule; a renewed CA is published *next to* the old one (the bundle keeps the previous
CA while it is valid) so clients that still hold the old serving certificate keep
verifying during the switch.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.errors import CertsError

CA_VALIDITY = dt.timedelta(days=3650)
SERVING_VALIDITY = dt.timedelta(days=365)
# Certificates are back-dated a little so a node whose clock lags still accepts them.
CLOCK_SKEW = dt.timedelta(minutes=5)
CA_COMMON_NAME = "tracecar-webhook-ca"


class InvalidRequest(CertsError, ValueError):
    """The names asked for cannot go into a certificate (empty, malformed)."""


@dataclass(frozen=True)
class Renewal:
    """Whether a certificate must be replaced, and why (`reason` is for logs and reports)."""

    due: bool
    reason: str

    def __bool__(self) -> bool:
        return self.due


@dataclass(frozen=True)
class Material:
    """A complete set: the CA bundle (signing CA first), the CA key, the serving pair.

    All PEM bytes, exactly what is written to files or a Secret.
    """

    ca_bundle: bytes
    ca_key: bytes
    cert: bytes
    key: bytes


@dataclass(frozen=True)
class Outcome:
    """What `reconcile` decided: the material to store and what changed."""

    material: Material
    ca_renewed: bool = False
    cert_renewed: bool = False
    reasons: tuple[str, ...] = field(default=())

    @property
    def changed(self) -> bool:
        return self.ca_renewed or self.cert_renewed


@dataclass(frozen=True)
class Names:
    """The subject alternative names a serving certificate must carry (validated)."""

    dns: tuple[str, ...]
    ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]

    @classmethod
    def of(cls, *, dns_names: Sequence[str], ip_addresses: Sequence[str] = ()) -> Names:
        dns = tuple(dict.fromkeys(n.strip().lower() for n in dns_names))
        if not dns and not ip_addresses:
            raise InvalidRequest("a serving certificate needs at least one DNS name or IP")
        for name in dns:
            _check_dns_name(name)
        try:
            ips = tuple(dict.fromkeys(ipaddress.ip_address(a.strip()) for a in ip_addresses))
        except ValueError as exc:
            raise InvalidRequest(f"not an IP address: {exc}") from None
        return cls(dns=dns, ips=ips)


def _check_dns_name(name: str) -> None:
    labels = name.split(".")
    ok = 0 < len(name) <= 253 and all(
        0 < len(label) <= 63
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
        and not label.startswith("-")
        and not label.endswith("-")
        for label in (labels[1:] if labels[0] == "*" else labels)
    )
    if not ok:
        raise InvalidRequest(
            f"not a DNS name: {name!r} (letters, digits, '-' and '.', labels of 1-63 chars)"
        )


# ---------------------------------------------------------------------------- issuing


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def issue_ca(
    *, now: dt.datetime, validity: dt.timedelta = CA_VALIDITY, common_name: str = CA_COMMON_NAME
) -> tuple[bytes, bytes]:
    """A self-signed CA limited to signing leaf certificates: (cert PEM, key PEM)."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)


def issue_serving(
    *,
    ca_cert: bytes,
    ca_key: bytes,
    names: Names,
    now: dt.datetime,
    validity: dt.timedelta = SERVING_VALIDITY,
) -> tuple[bytes, bytes]:
    """A TLS server certificate for `names`, signed by the CA: (cert PEM, key PEM).

    Never outlives its CA: a leaf valid past its issuer would fail verification early.
    """
    ca = x509.load_pem_x509_certificate(ca_cert)
    signer = serialization.load_pem_private_key(ca_key, password=None)
    if not isinstance(signer, ec.EllipticCurvePrivateKey):
        raise InvalidRequest("the CA key is not an ECDSA key")
    key = _new_key()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names.dns]
    sans += [x509.IPAddress(ip) for ip in names.ips]
    common_name = names.dns[0] if names.dns else str(names.ips[0])
    not_after = min(now + validity, ca.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
        .sign(signer, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)


# ---------------------------------------------------------------------------- deciding


def lifetime_left(cert: x509.Certificate, *, now: dt.datetime) -> float:
    """The fraction of the certificate's lifetime still ahead (0 when expired)."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    total = (end - start).total_seconds()
    if total <= 0:
        return 0.0
    return max(0.0, min(1.0, (end - now).total_seconds() / total))


def needs_renewal(cert: x509.Certificate, *, now: dt.datetime) -> Renewal:
    """Due when a third of the lifetime or less is left (or the cert is not yet valid)."""
    if now < cert.not_valid_before_utc - CLOCK_SKEW:
        return Renewal(True, f"not valid before {cert.not_valid_before_utc.isoformat()}")
    left = lifetime_left(cert, now=now)
    if left <= 1 / 3:
        end = cert.not_valid_after_utc.isoformat()
        return Renewal(True, f"{left:.0%} of its lifetime left (expires {end})")
    return Renewal(False, f"{left:.0%} of its lifetime left")


def covers(cert: x509.Certificate, names: Names) -> Renewal:
    """Due when the certificate lacks one of the requested names (extra names are fine)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return Renewal(True, "no subject alternative names")
    have_dns = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    have_ips = set(san.get_values_for_type(x509.IPAddress))
    missing = [n for n in names.dns if n not in have_dns]
    missing += [str(ip) for ip in names.ips if ip not in have_ips]
    if missing:
        return Renewal(True, f"does not cover {', '.join(missing)}")
    return Renewal(False, "covers the requested names")


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _key_matches(cert: x509.Certificate, key_pem: bytes) -> bool:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return False
    return key.public_key() == cert.public_key()


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _load_chain(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem) if pem.strip() else []


def reconcile(
    current: Material | None,
    *,
    names: Names,
    now: dt.datetime,
    rotate: bool = False,
    ca_validity: dt.timedelta = CA_VALIDITY,
    serving_validity: dt.timedelta = SERVING_VALIDITY,
) -> Outcome:
    """Decide what to store: keep `current` when it is good, otherwise renew what is due.

    `rotate=True` forces a new serving certificate (and key) from the same CA.
    Pure apart from key generation; never raises on bad stored material: unreadable
    parts are simply renewed, with the reason recorded.
    """
    reasons: list[str] = []
    ca_cert: x509.Certificate | None = None
    previous_cas: list[x509.Certificate] = []
    ca_key_ok = False

    if current is None:
        reasons.append("CA: none stored")
    else:
        try:
            chain = _load_chain(current.ca_bundle)
        except ValueError:
            chain = []
        if not chain or not _is_ca(chain[0]):
            reasons.append("CA: missing or unreadable")
        elif not _key_matches(chain[0], current.ca_key):
            reasons.append("CA: key missing or does not match")
        else:
            ca_cert, previous_cas, ca_key_ok = chain[0], chain[1:], True
            due = needs_renewal(ca_cert, now=now)
            if due:
                reasons.append(f"CA: {due.reason}")
                previous_cas = [ca_cert, *previous_cas]
                ca_cert, ca_key_ok = None, False

    ca_renewed = False
    if ca_cert is not None and ca_key_ok and current is not None:
        ca_pem, ca_key_pem = _cert_pem(ca_cert), current.ca_key
    else:
        ca_pem, ca_key_pem = issue_ca(now=now, validity=ca_validity)
        ca_cert, ca_renewed = x509.load_pem_x509_certificate(ca_pem), True

    # The bundle keeps older CAs only while they are still valid.
    kept = [c for c in previous_cas if c.not_valid_after_utc > now and c != ca_cert]
    bundle = ca_pem + b"".join(_cert_pem(c) for c in kept)

    cert_reason = _serving_due(current, ca_cert=ca_cert, names=names, now=now, rotate=rotate)
    if cert_reason is None and current is not None:
        material = Material(ca_bundle=bundle, ca_key=ca_key_pem, cert=current.cert, key=current.key)
        bundle_changed = current.ca_bundle != bundle
        if bundle_changed:
            reasons.append("CA bundle: dropped expired CAs")
        return Outcome(material=material, ca_renewed=bundle_changed, reasons=tuple(reasons))

    if cert_reason is not None:
        reasons.append(f"serving certificate: {cert_reason}")
    cert_pem, key_pem = issue_serving(
        ca_cert=ca_pem, ca_key=ca_key_pem, names=names, now=now, validity=serving_validity
    )
    material = Material(ca_bundle=bundle, ca_key=ca_key_pem, cert=cert_pem, key=key_pem)
    return Outcome(
        material=material, ca_renewed=ca_renewed, cert_renewed=True, reasons=tuple(reasons)
    )


def _serving_due(
    current: Material | None,
    *,
    ca_cert: x509.Certificate,
    names: Names,
    now: dt.datetime,
    rotate: bool,
) -> str | None:
    """Why the serving certificate must be reissued, or None to keep it."""
    if current is None or not current.cert.strip():
        return "none stored"
    if rotate:
        return "rotation requested"
    try:
        cert = x509.load_pem_x509_certificate(current.cert)
    except ValueError:
        return "unreadable"
    if not _key_matches(cert, current.key):
        return "key missing or does not match"
    if not _signed_by(cert, ca_cert):
        return "not issued by the current CA"
    for check in (covers(cert, names), needs_renewal(cert, now=now)):
        if check:
            return check.reason
    return None


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
