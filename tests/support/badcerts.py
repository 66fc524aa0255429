"""Certificates that load but whose DER inside is broken: what a hostile or buggy issuer hands out.

cryptography parses extensions lazily, so these load with
``x509.load_*_certificate`` and raise ``ValueError`` only when the
extensions are read. :class:`RawCA` is a plain CA made at test time that
can sign such certificates (the dev CA only issues well-formed ones).
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

#: A SubjectAlternativeName value that is not valid DER (a SEQUENCE shorter than it says).
MALFORMED_SAN = b"\x30\x05\x86\x03ab"
_SVID_SUBJECT = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "svid")])


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
    )


def _san(uri: str | None) -> x509.ExtensionType:
    if uri is None:
        return x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, MALFORMED_SAN)
    return x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)])


class RawCA:
    """A self-signed root for ``trust_domain``; ``malformed_san=True`` breaks the root's own SAN."""

    def __init__(self, trust_domain: str, *, malformed_san: bool = False) -> None:
        self.trust_domain = trust_domain
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"raw CA {trust_domain}")])
        self.certificate = (
            _builder(name, name, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(_san(None if malformed_san else f"spiffe://{trust_domain}"), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def leaf(
        self, spiffe_id: str, *, malformed_san: bool = False
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """An X509-SVID leaf for ``spiffe_id`` and its key; ``malformed_san`` breaks its SAN's DER."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            _builder(_SVID_SUBJECT, self.certificate.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(_san(None if malformed_san else spiffe_id), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert, key


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
    )
