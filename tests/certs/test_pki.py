"""The pure certificate logic: what is issued, and when it is renewed (real certificates)."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from certs import _pki

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
NAMES = _pki.Names.of(dns_names=["svc.ns.svc", "localhost"], ip_addresses=["127.0.0.1"])


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_serving_certificate_is_ecdsa_with_sans_and_server_auth() -> None:
    ca_pem, ca_key = _pki.issue_ca(now=NOW)
    cert_pem, key_pem = _pki.issue_serving(ca_cert=ca_pem, ca_key=ca_key, names=NAMES, now=NOW)
    cert, ca = _cert(cert_pem), _cert(ca_pem)

    for c in (cert, ca):
        public = c.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert public.curve.name == "secp256r1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["svc.ns.svc", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert b"PRIVATE KEY" in key_pem


@pytest.mark.parametrize("name", ["svc.ns.svc", "localhost"])
def test_serving_certificate_verifies_as_a_tls_client_would(name: str) -> None:
    # The same path validation an API server does: chain to the CA, name, EKU, validity.
    ca_pem, ca_key = _pki.issue_ca(now=NOW)
    cert_pem, _ = _pki.issue_serving(ca_cert=ca_pem, ca_key=ca_key, names=NAMES, now=NOW)
    verifier = (
        PolicyBuilder()
        .store(Store([_cert(ca_pem)]))
        .time(NOW + dt.timedelta(days=1))
        .build_server_verifier(x509.DNSName(name))
    )
    chain = verifier.verify(_cert(cert_pem), [])
    assert chain[-1] == _cert(ca_pem)


def test_leaf_never_outlives_its_ca() -> None:
    ca_pem, ca_key = _pki.issue_ca(now=NOW, validity=dt.timedelta(days=10))
    cert_pem, _ = _pki.issue_serving(
        ca_cert=ca_pem, ca_key=ca_key, names=NAMES, now=NOW, validity=dt.timedelta(days=365)
    )
    assert _cert(cert_pem).not_valid_after_utc == _cert(ca_pem).not_valid_after_utc


def test_renewal_is_due_when_a_third_of_the_lifetime_is_left() -> None:
    ca_pem, ca_key = _pki.issue_ca(now=NOW)
    cert_pem, _ = _pki.issue_serving(
        ca_cert=ca_pem, ca_key=ca_key, names=NAMES, now=NOW, validity=dt.timedelta(days=30)
    )
    cert = _cert(cert_pem)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    third_left = end - (end - start) / 3

    assert not _pki.needs_renewal(cert, now=NOW)
    assert not _pki.needs_renewal(cert, now=third_left - dt.timedelta(minutes=1))
    due = _pki.needs_renewal(cert, now=third_left + dt.timedelta(minutes=1))
    assert due and "lifetime left" in due.reason
    assert _pki.needs_renewal(cert, now=end + dt.timedelta(days=1))


def test_names_not_covered_are_reported() -> None:
    ca_pem, ca_key = _pki.issue_ca(now=NOW)
    cert_pem, _ = _pki.issue_serving(ca_cert=ca_pem, ca_key=ca_key, names=NAMES, now=NOW)
    wider = _pki.Names.of(dns_names=["svc.ns.svc", "other.ns.svc"], ip_addresses=["::1"])
    check = _pki.covers(_cert(cert_pem), wider)
    assert check and "other.ns.svc" in check.reason and "::1" in check.reason
    assert not _pki.covers(_cert(cert_pem), _pki.Names.of(dns_names=["LOCALHOST"]))


@pytest.mark.parametrize(
    ("dns", "ips"),
    [([], []), (["bad name"], []), (["-x.example"], []), (["a" * 64], []), ([], ["1.2.3.999"])],
)
def test_names_that_cannot_go_into_a_certificate_are_refused(
    dns: list[str], ips: list[str]
) -> None:
    with pytest.raises(_pki.InvalidRequest):
        _pki.Names.of(dns_names=dns, ip_addresses=ips)


def test_reconcile_keeps_good_material_and_renews_only_what_is_due() -> None:
    first = _pki.reconcile(None, names=NAMES, now=NOW)
    assert first.ca_renewed and first.cert_renewed

    again = _pki.reconcile(first.material, names=NAMES, now=NOW + dt.timedelta(days=30))
    assert not again.changed and again.material == first.material

    later = _pki.reconcile(first.material, names=NAMES, now=NOW + dt.timedelta(days=250))
    assert later.cert_renewed and not later.ca_renewed
    assert later.material.ca_bundle == first.material.ca_bundle
    assert later.material.cert != first.material.cert

    rotated = _pki.reconcile(first.material, names=NAMES, rotate=True, now=NOW)
    assert rotated.cert_renewed and not rotated.ca_renewed
    assert rotated.material.key != first.material.key


def test_a_cert_from_another_ca_or_with_a_foreign_key_is_reissued() -> None:
    one = _pki.reconcile(None, names=NAMES, now=NOW).material
    two = _pki.reconcile(None, names=NAMES, now=NOW).material
    mixed = _pki.Material(ca_bundle=one.ca_bundle, ca_key=one.ca_key, cert=two.cert, key=two.key)
    out = _pki.reconcile(mixed, names=NAMES, now=NOW)
    assert out.cert_renewed and "not issued by the current CA" in " ".join(out.reasons)

    wrong_key = _pki.Material(
        ca_bundle=one.ca_bundle, ca_key=one.ca_key, cert=one.cert, key=two.key
    )
    out = _pki.reconcile(wrong_key, names=NAMES, now=NOW)
    assert out.cert_renewed and not out.ca_renewed

    garbage = _pki.Material(ca_bundle=b"junk", ca_key=b"", cert=b"junk", key=b"")
    out = _pki.reconcile(garbage, names=NAMES, now=NOW)
    assert out.ca_renewed and out.cert_renewed


def test_a_renewed_ca_is_published_next_to_the_old_one() -> None:
    ten_days = dt.timedelta(days=10)
    first = _pki.reconcile(None, names=NAMES, now=NOW, ca_validity=ten_days).material
    old_ca = _cert(first.ca_bundle)

    later = NOW + dt.timedelta(days=8)
    out = _pki.reconcile(first, names=NAMES, now=later, ca_validity=ten_days)
    assert out.ca_renewed and out.cert_renewed
    bundle = x509.load_pem_x509_certificates(out.material.ca_bundle)
    assert len(bundle) == 2 and bundle[1] == old_ca and bundle[0] != old_ca
    # The new serving cert chains to the new CA (the first of the bundle).
    _cert(out.material.cert).verify_directly_issued_by(bundle[0])

    # Once the old CA has expired it leaves the bundle.
    gone = _pki.reconcile(out.material, names=NAMES, now=NOW + dt.timedelta(days=11))
    assert x509.load_pem_x509_certificates(gone.material.ca_bundle) == [bundle[0]]
