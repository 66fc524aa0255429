"""X.509 trust bundles: one :class:`Bundle` per trust domain, a :class:`BundleSet` of them.

The shape of go-spiffe's ``bundle/x509bundle``: a bundle is the set of X.509
authorities (CA certificates) that vouch for the SVIDs of one trust domain;
a set holds at most one bundle per trust domain and answers
:meth:`BundleSet.bundle_for`. Consumers that only verify chains depend on
the one-method :class:`BundleSource` protocol, which a :class:`BundleSet`,
an :class:`~meshnode.identity.snapshot.IdentitySnapshot` and a test's plain
value all satisfy.

A :class:`BundleSet` is also a read-only ``Mapping`` of trust domain name to
its authorities (a tuple of certificates), for code that hands roots to TLS
APIs. Both are immutable: a changed bundle is a new set.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshnode.errors import InvalidIdentityError
from meshnode.spiffeid import TrustDomain

__all__ = ["Bundle", "BundleSet", "BundleSource"]


@dataclass(frozen=True)
class Bundle:
    """The X.509 authorities of one trust domain (validated: every member is a certificate)."""

    trust_domain: TrustDomain
    authorities: tuple[x509.Certificate, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "trust_domain", TrustDomain(self.trust_domain))
        authorities = tuple(self.authorities)
        for cert in authorities:
            if not isinstance(cert, x509.Certificate):
                raise InvalidIdentityError(
                    reason=f"the bundle of '{self.trust_domain}' holds a {type(cert).__name__}, not a certificate",
                    component="identity", trust_domain=self.trust_domain,
                )
        object.__setattr__(self, "authorities", authorities)

    def pem(self) -> bytes:
        """The authorities as concatenated PEM (what TLS APIs take as roots)."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.authorities)

    def fingerprint(self) -> str:
        """SHA-256 over the authorities' DER, in order."""
        der = b"".join(c.public_bytes(serialization.Encoding.DER) for c in self.authorities)
        return hashlib.sha256(der).hexdigest()

    def earliest_expiry(self) -> dt.datetime | None:
        """When the first authority expires (None for an empty bundle)."""
        return min((c.not_valid_after_utc for c in self.authorities), default=None)


class BundleSource(Protocol):
    """Anything that can give the bundle of a trust domain (go-spiffe's ``x509bundle.Source``)."""

    def bundle_for(self, trust_domain: str) -> Bundle | None:
        """The bundle of ``trust_domain``, or None when there is none."""
        ...


class BundleSet(Mapping[str, tuple[x509.Certificate, ...]]):
    """At most one :class:`Bundle` per trust domain; immutable."""

    __slots__ = ("_bundles",)

    def __init__(
        self, bundles: Iterable[Bundle] | Mapping[str, Iterable[x509.Certificate]] = ()
    ) -> None:
        items: Iterable[Bundle]
        if isinstance(bundles, Mapping):
            items = (Bundle(TrustDomain(td), tuple(certs)) for td, certs in bundles.items())
        else:
            items = bundles
        by_td: dict[str, Bundle] = {}
        for bundle in items:
            if bundle.trust_domain in by_td:
                raise InvalidIdentityError(
                    reason=f"two bundles for the trust domain '{bundle.trust_domain}' in one set",
                    component="identity", trust_domain=bundle.trust_domain,
                )
            by_td[bundle.trust_domain] = bundle
        self._bundles = by_td

    @classmethod
    def of(cls, bundles: BundleSet | Mapping[str, Iterable[x509.Certificate]]) -> BundleSet:
        """``bundles`` as a set (itself when it already is one)."""
        return bundles if isinstance(bundles, BundleSet) else cls(bundles)

    def bundle_for(self, trust_domain: str) -> Bundle | None:
        return self._bundles.get(trust_domain)

    @property
    def trust_domains(self) -> frozenset[str]:
        return frozenset(self._bundles)

    def with_bundle(self, bundle: Bundle) -> BundleSet:
        """A new set where ``bundle`` replaces the bundle of its trust domain."""
        return BundleSet([*(b for td, b in self._bundles.items() if td != bundle.trust_domain), bundle])

    def without(self, trust_domain: str) -> BundleSet:
        return BundleSet(b for td, b in self._bundles.items() if td != trust_domain)

    # -- Mapping: trust domain -> authorities -------------------------------------------------------

    def __getitem__(self, trust_domain: str) -> tuple[x509.Certificate, ...]:
        return self._bundles[trust_domain].authorities

    def __iter__(self) -> Iterator[str]:
        return iter(self._bundles)

    def __len__(self) -> int:
        return len(self._bundles)

    def __repr__(self) -> str:
        return f"BundleSet({', '.join(f'{td}: {len(b.authorities)} CA' for td, b in sorted(self._bundles.items()))})"
