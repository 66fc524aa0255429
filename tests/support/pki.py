"""X.509 hierarchies made at test time, with exactly the property a chain test is about.

No tests here. :class:`CA` is a root or an intermediate with its key; it
signs intermediates and leaves whose every relevant field is a keyword:
path length, URI name constraints, key usage, EKU, validity, subject, SAN
criticality. Defaults are what a conforming X509-SVID issuer makes (the
shape SPIRE issues: URI SAN only, digitalSignature, serverAuth+clientAuth,
SKI/AKI), so a test changes one thing and the rest stays valid.

``ca.chain(leaf)`` is what a workload presents: the leaf, then the
intermediates from ``ca`` up to (not including) the root.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA", "SPIRE_SUBJECT", "Leaf", "ago", "from_now", "key_usage"]

HOUR = dt.timedelta(hours=1)
SERVER_AND_CLIENT = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
#: The subject SPIRE gives X509-SVIDs (``C=US, O=SPIRE, x500UniqueIdentifier=...``).
SPIRE_SUBJECT = x509.Name(
    [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIRE"),
        x509.NameAttribute(NameOID.X500_UNIQUE_IDENTIFIER, "1f7a2c9e0b4d6f8a"),
    ]
)
_DEFAULT_LEAF_SUBJECT = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test workload")])


def from_now(delta: dt.timedelta) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + delta


def ago(delta: dt.timedelta) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - delta


def key_usage(*, ca: bool, key_cert_sign: bool | None = None, crl_sign: bool | None = None,
              key_agreement: bool = False, key_encipherment: bool = False) -> x509.KeyUsage:
    """A CA's usage (keyCertSign, cRLSign) or a leaf's (digitalSignature); each flag can be overridden."""
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=key_encipherment,
        data_encipherment=False, key_agreement=key_agreement,
        key_cert_sign=ca if key_cert_sign is None else key_cert_sign,
        crl_sign=ca if crl_sign is None else crl_sign, encipher_only=False, decipher_only=False,
    )


@dataclass(frozen=True)
class Leaf:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


class CA:
    """A CA certificate, its key, and the intermediates between it and its root (itself excluded)."""

    def __init__(
        self, trust_domain: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey,
        above: tuple[x509.Certificate, ...] = (),
    ) -> None:
        self.trust_domain = trust_domain  # the one its URI SAN names
        self.cert = cert
        self.key = key
        self.above = above  # the intermediates that signed this one, nearest first (root excluded)

    @property
    def is_root(self) -> bool:
        return self.cert.subject == self.cert.issuer

    @classmethod
    def root(
        cls,
        trust_domain: str,
        *,
        name: str | None = None,
        path_length: int | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> CA:
        """A self-signed root of ``trust_domain`` (its URI SAN is the trust domain's ID, as SPIRE's)."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        subject = _ca_name(name or f"{trust_domain} root")
        builder = _ca_builder(
            subject, subject, key.public_key(), key.public_key(), trust_domain,
            path_length=path_length, not_before=not_before, not_after=not_after,
            ku=key_usage(ca=True), eku=None, permitted_uris=(), aki=False,
        )
        return cls(trust_domain, builder.sign(key, hashes.SHA256()), key)

    def intermediate(
        self,
        trust_domain: str,
        *,
        name: str | None = None,
        path_length: int | None = None,
        ku: x509.KeyUsage | None = None,
        omit_key_usage: bool = False,
        bc_critical: bool | None = True,
        eku: Sequence[x509.ObjectIdentifier] | None = None,
        permitted_uris: Sequence[str] = (),
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> CA:
        """A CA signed by this one whose URI SAN is ``spiffe://<trust_domain>``.

        ``permitted_uris``: URI name constraints (RFC 5280: host names such
        as ``b.org``). ``bc_critical``: basicConstraints (cA=true) critical,
        not critical, or (None) left out. ``key``: reuse a key, e.g. to
        cross-sign the same CA.
        """
        key = key or ec.generate_private_key(ec.SECP256R1())
        subject = _ca_name(name or f"{trust_domain} intermediate")
        builder = _ca_builder(
            subject, self.cert.subject, key.public_key(), self.key.public_key(), trust_domain,
            path_length=path_length, not_before=not_before, not_after=not_after,
            ku=None if omit_key_usage else (ku or key_usage(ca=True)), eku=eku,
            permitted_uris=permitted_uris, aki=True, bc_critical=bc_critical,
        )
        above = () if self.is_root else (self.cert, *self.above)
        return CA(trust_domain, builder.sign(self.key, hashes.SHA256()), key, above)

    def leaf(
        self,
        spiffe_id: str,
        *,
        dns: Sequence[str] = (),
        subject: x509.Name = _DEFAULT_LEAF_SUBJECT,
        san_critical: bool = False,
        ca: bool = False,
        ku: x509.KeyUsage | None = None,
        eku: Sequence[x509.ObjectIdentifier] | None = SERVER_AND_CLIENT,
        eku_critical: bool = False,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Leaf:
        """An X509-SVID leaf for ``spiffe_id`` signed by this CA (``eku=None``: no EKU extension)."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
        names += [x509.DNSName(d) for d in dns]
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or ago(dt.timedelta(minutes=5)))
            .not_valid_after(not_after or from_now(HOUR))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(ku or key_usage(ca=False, key_encipherment=True, key_agreement=True), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=san_critical)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=eku_critical)
        return Leaf(builder.sign(self.key, hashes.SHA256()), key)

    def chain(self, leaf: Leaf) -> tuple[x509.Certificate, ...]:
        """What a workload presents: its leaf, then the intermediates up to (not including) the root."""
        return (leaf.cert, *([] if self.is_root else [self.cert, *self.above]))


def _ca_name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshnode tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer_key: ec.EllipticCurvePublicKey,
    trust_domain: str,
    *,
    path_length: int | None,
    not_before: dt.datetime | None,
    not_after: dt.datetime | None,
    ku: x509.KeyUsage | None,
    eku: Sequence[x509.ObjectIdentifier] | None,
    permitted_uris: Sequence[str],
    aki: bool,
    bc_critical: bool | None = True,
) -> x509.CertificateBuilder:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or ago(dt.timedelta(minutes=10)))
        .not_valid_after(not_after or from_now(dt.timedelta(days=1)))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]), critical=False
        )
    )
    if bc_critical is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=bc_critical)
    if ku is not None:
        builder = builder.add_extension(ku, critical=True)
    if aki:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), critical=False)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if permitted_uris:
        builder = builder.add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.UniformResourceIdentifier(u) for u in permitted_uris], excluded_subtrees=None
            ),
            critical=True,
        )
    return builder
