"""The caller's identity, from what gRPC's TLS layer verified.

gRPC has checked the client chain against the server's root list and
exposes the result in ``context.auth_context()``. What it has *not* done:

* validated the SPIFFE ID (``spiffe://td/a/../b`` comes through), or required
  exactly one URI SAN in a leaf that is not a CA and has no URI-shaped DNS
  SAN (X509-SVID rules);
* tied the chain to the bundle of the *caller's own* trust domain: with
  several trust domains the root list is their union, so trust domain B's
  CA could vouch for an ID in trust domain A.

:func:`resolve_peer` does both from the leaf (and intermediates) PEM in the
auth context. The federated chain check runs only when the node accepts
more than one trust domain (see :class:`TrustInfo`); it is
:func:`~meshnode.identity.x509chain.verify_chain`, cryptography's RFC 5280
verifier, against the caller's own trust domain's bundle only. It costs a
signature check per certificate on the path (~0.1 ms for one P-256 link);
the authorizer caches its outcome per leaf, intermediates and bundle
generation, so it runs once per caller certificate and bundle generation.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509

from meshnode.bundle import BundleSource
from meshnode.errors import InvalidIdentityError
from meshnode.identity.x509chain import verify_chain
from meshnode.identity.x509svid import check_leaf, spiffe_id_of
from meshnode.spiffeid import SpiffeID

__all__ = ["AcceptedTrust", "PeerIdentity", "TrustInfo", "TrustSnapshot", "resolve_peer"]

AuthContext = Mapping[str, Sequence[bytes]]


class TrustSnapshot(BundleSource, Protocol):
    """The part of an :class:`~meshnode.identity.IdentitySnapshot` authorization needs: the bundles
    (as a :class:`~meshnode.bundle.BundleSource`) and the generation they belong to."""

    @property
    def generation(self) -> int: ...


class _SnapshotSource(Protocol):
    def current(self) -> TrustSnapshot: ...


class TrustInfo(Protocol):
    """The node's trust: which trust domains it accepts callers from, and their bundles."""

    @property
    def accepted_trust_domains(self) -> frozenset[str]: ...

    def current(self) -> TrustSnapshot: ...


@dataclass(frozen=True)
class AcceptedTrust:
    """Adapts an identity source (``current()`` -> snapshot) plus the accepted trust domains."""

    source: _SnapshotSource
    accepted_trust_domains: frozenset[str]

    def current(self) -> TrustSnapshot:
        return self.source.current()


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """``spiffe_id`` when the caller is usable, else None and ``problem`` says why."""

    spiffe_id: SpiffeID | None
    problem: str = ""


def _chain(auth: AuthContext) -> list[x509.Certificate] | str:
    pems = auth.get("x509_pem_cert")
    if not pems:
        return "the caller presented no client certificate"
    try:
        leaf = x509.load_pem_x509_certificate(pems[0])
        extra = [c for blob in auth.get("x509_pem_cert_chain") or () for c in x509.load_pem_x509_certificates(blob)]
    except ValueError:
        return "the caller's certificate could not be parsed"
    return [leaf, *(c for c in extra if c != leaf)]


def resolve_peer(
    auth: AuthContext,
    *,
    accepted: frozenset[str] | None = None,
    bundles: BundleSource | None = None,
    now: dt.datetime | None = None,
) -> PeerIdentity:
    """Validate the verified caller in ``auth`` (an ``auth_context()`` dict).

    ``accepted``: trust domains callers may come from (None: any the TLS
    layer verified). ``bundles``: when given, the chain must also verify
    against the bundle of the caller's own trust domain (federation), at
    ``now`` (default: the current time).
    """
    chain = _chain(auth)
    if isinstance(chain, str):
        return PeerIdentity(None, chain)
    try:
        spiffe_id = spiffe_id_of(chain[0])
        check_leaf(chain[0])
    except InvalidIdentityError as exc:
        return PeerIdentity(None, exc.reason)
    except ValueError:  # cryptography parses extensions lazily: malformed DER surfaces here
        return PeerIdentity(None, "the caller's certificate has an extension or a name that could not be parsed")
    td = spiffe_id.trust_domain
    if accepted is not None and td not in accepted:
        return PeerIdentity(None, f"trust domain {td!r} of {spiffe_id} is not accepted by this server")
    if bundles is not None:
        bundle = bundles.bundle_for(td)
        if bundle is None or not bundle.authorities:
            return PeerIdentity(None, f"no trust bundle for the caller's trust domain {td!r}")
        try:
            verify_chain(chain, bundle.authorities, now, usage="client")
        except InvalidIdentityError as exc:
            return PeerIdentity(None, f"{spiffe_id}: chain does not verify against the bundle of {td!r}: {exc.reason}")
    return PeerIdentity(spiffe_id)
