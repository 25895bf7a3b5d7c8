"""The dev cluster's certificates: one CA, a serving cert per server, a client cert per
component (its identity is the cert's CN and O, as Kubernetes' x509 authenticator reads
them), and the service-account signing key. Made once per cluster directory and kept
across ``up``/``down`` so kubeconfigs a user exported keep working."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devcluster import _layout as L

_VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True, kw_only=True)
class Identity:
    """A client certificate: file stem, user name (CN) and groups (O)."""

    stem: str
    user: str
    groups: tuple[str, ...] = ()


# Each component authenticates as the identity Kubernetes' default RBAC expects of it.
CLIENTS = (
    Identity(stem="admin", user="tracecar-admin", groups=("system:masters",)),
    Identity(stem="controller-manager", user="system:kube-controller-manager"),
    Identity(stem="scheduler", user="system:kube-scheduler"),
    Identity(stem="kubelet", user=f"system:node:{L.NODE_NAME}", groups=("system:nodes",)),
    Identity(stem="kube-proxy", user="system:kube-proxy"),
    # The apiserver's client cert towards the kubelet (logs, exec, port-forward).
    Identity(
        stem="apiserver-kubelet-client",
        user="kube-apiserver-kubelet-client",
        groups=("system:masters",),
    ),
)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.replace(path)


def _issue(
    *,
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    name: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    usage: x509.ObjectIdentifier,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if dns or ips:
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def ensure(pki: Path) -> None:
    """Create every certificate and key in ``pki`` unless a complete set is there."""
    if (pki / ".complete").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tracecar-dev-cluster-ca")])
    now = dt.datetime.now(dt.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(pki / "ca.key", _pem_key(ca_key))
    _write(pki / "ca.crt", ca.public_bytes(serialization.Encoding.PEM), 0o644)

    servers = {
        "apiserver": (
            (
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "localhost",
            ),
            ("127.0.0.1", L.NODE_IP, L.KUBERNETES_SERVICE_IP),
        ),
        "kubelet": ((L.NODE_NAME, "localhost"), ("127.0.0.1", L.NODE_IP)),
    }
    for stem, (dns, ips) in servers.items():
        key = _key()
        cert = _issue(
            ca_key=ca_key,
            ca=ca,
            key=key,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            dns=dns,
            ips=ips,
            name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])]),
        )
        _write(pki / f"{stem}.key", _pem_key(key))
        _write(pki / f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    for ident in CLIENTS:
        key = _key()
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in ident.groups]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, ident.user))
        cert = _issue(
            ca_key=ca_key,
            ca=ca,
            key=key,
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            name=x509.Name(attrs),
        )
        _write(pki / f"{ident.stem}.key", _pem_key(key))
        _write(pki / f"{ident.stem}.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    sa = _key()
    _write(pki / "sa.key", _pem_key(sa))
    _write(
        pki / "sa.pub",
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        0o644,
    )
    (pki / ".complete").touch()
