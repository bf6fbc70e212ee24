"""Test certificates: a local CA and leaves it issues, to exercise x5c chain checks."""

from __future__ import annotations

import base64
import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

EPOCH_START = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
EPOCH_END = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Only"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed P-384 CA certificate."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(EPOCH_START)
        .not_valid_after(EPOCH_END)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    subject_key: ec.EllipticCurvePublicKey,
    common_name: str,
) -> x509.Certificate:
    """A leaf certificate for ``subject_key`` issued by the CA."""
    return (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(subject_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(EPOCH_START)
        .not_valid_after(EPOCH_END)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA384())
    )


def der_b64(cert: x509.Certificate) -> str:
    """A certificate as an x5c entry (base64 DER)."""
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
