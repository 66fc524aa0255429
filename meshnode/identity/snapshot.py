"""The identity snapshot: one immutable, coherent view of a workload identity.

A snapshot holds the X.509-SVID chain (leaf first), its private key, the
SPIFFE ID, the validity window and the trust bundles (a
:class:`~meshnode.bundle.BundleSet`, one bundle per trust domain),
plus a ``generation`` that grows by one on every change a source publishes.
Readers take one reference and never see half a rotation.

The private key never appears in ``repr()``; ``key_pem`` exists only to hand
the key to TLS APIs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from meshnode.bundle import Bundle, BundleSet
from meshnode.errors import InvalidIdentityError
from meshnode.spiffeid import SpiffeID

__all__ = ["Bundles", "IdentitySnapshot", "certs_pem", "utcnow"]

#: Trust bundles as given to a snapshot: trust domain name -> its root certificates (a
#: :class:`~meshnode.bundle.BundleSet` is one; a snapshot always holds a BundleSet).
Bundles = Mapping[str, tuple[x509.Certificate, ...]]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def certs_pem(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@dataclass(frozen=True, eq=False)
class IdentitySnapshot:
    """An X.509-SVID with its key and the trust bundles, at one generation."""

    spiffe_id: SpiffeID
    chain: tuple[x509.Certificate, ...]
    private_key: CertificateIssuerPrivateKeyTypes = field(repr=False)
    bundles: Bundles
    generation: int = 1

    def __post_init__(self) -> None:
        if not self.chain:
            raise InvalidIdentityError(reason="an identity snapshot needs at least the leaf certificate",
                                       component="identity")
        object.__setattr__(self, "bundles", BundleSet.of(self.bundles))

    def __repr__(self) -> str:
        return (
            f"IdentitySnapshot(spiffe_id='{self.spiffe_id}', generation={self.generation}, "
            f"serial={self.serial}, not_after='{self.not_after.isoformat()}', "
            f"trust_domains={sorted(self.bundles)})"
        )

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def trust_domain(self) -> str:
        return self.spiffe_id.trust_domain

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc

    @property
    def not_before(self) -> dt.datetime:
        return self.leaf.not_valid_before_utc

    @property
    def serial(self) -> str:
        return format(self.leaf.serial_number, "x")

    def expired(self, now: dt.datetime | None = None) -> bool:
        return (now or utcnow()) >= self.not_after

    def seconds_left(self, now: dt.datetime | None = None) -> float:
        return (self.not_after - (now or utcnow())).total_seconds()

    @cached_property
    def chain_pem(self) -> bytes:
        return certs_pem(self.chain)

    @cached_property
    def key_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def bundle_for(self, trust_domain: str) -> Bundle | None:
        """The bundle of ``trust_domain`` (a snapshot is a :class:`~meshnode.bundle.BundleSource`)."""
        return BundleSet.of(self.bundles).bundle_for(trust_domain)

    def bundle_pem(self, trust_domain: str) -> bytes:
        """PEM roots of one trust domain (empty when unknown)."""
        return certs_pem(self.bundles.get(trust_domain, ()))

    def roots_pem(self, trust_domains: Iterable[str]) -> bytes:
        """PEM roots of several trust domains, in the given order."""
        return b"".join(self.bundle_pem(td) for td in trust_domains)

    @cached_property
    def svid_fingerprint(self) -> str:
        return hashlib.sha256(b"".join(c.public_bytes(serialization.Encoding.DER) for c in self.chain)).hexdigest()

    def bundle_fingerprint(self, trust_domain: str) -> str:
        der = b"".join(
            c.public_bytes(serialization.Encoding.DER) for c in self.bundles.get(trust_domain, ())
        )
        return hashlib.sha256(der).hexdigest()

    @cached_property
    def fingerprint(self) -> str:
        """Digest of everything a TLS stack uses: chain and every bundle."""
        parts = [self.svid_fingerprint] + [
            f"{td}={self.bundle_fingerprint(td)}" for td in sorted(self.bundles)
        ]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    def with_generation(self, generation: int) -> IdentitySnapshot:
        return IdentitySnapshot(self.spiffe_id, self.chain, self.private_key, self.bundles, generation)
