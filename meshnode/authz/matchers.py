"""Peer matchers: which callers (SPIFFE IDs) a rule is about.

Every matcher answers ``matches(peer)`` for a validated
:class:`~meshnode.spiffeid.SpiffeID` and explains itself with
``describe()``. They compose: :class:`AnyOf`, :class:`AllOf`, :class:`Not`.

The allowlist spelling (``[authz] allow = [...]`` and the rule builders in
:mod:`meshnode.authz.policy`) has three forms, parsed by :func:`parse_peer`:

====================================  =========================================
``spiffe://example.org/ns/prod/api``  exactly that ID
``spiffe://example.org``              any ID of the trust domain
``spiffe://example.org/ns/prod/*``    IDs below ``/ns/prod``, on segment
                                      boundaries: ``/ns/prod/a`` and
                                      ``/ns/prod/a/b`` match; ``/ns/prod``
                                      itself and ``/ns/production`` do not
``*``                                 any authenticated caller (from any trust
                                      domain the server accepts)
====================================  =========================================

A43 policy files use plain string wildcards instead (:class:`IdPattern`),
with gRPC's semantics: ``spiffe://example.org/ns/prod*`` *does* match
``/ns/production``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from meshnode.authz.patterns import StringPattern
from meshnode.errors import InvalidSpiffeIdError, PolicyError
from meshnode.spiffeid import SpiffeID, parse_spiffe_id

__all__ = [
    "AllOf",
    "AnyOf",
    "AnyPeer",
    "ExactID",
    "IdPattern",
    "Not",
    "PathPrefix",
    "PeerMatcher",
    "PeerSpec",
    "TrustDomain",
    "as_peer_matcher",
    "parse_peer",
]


@runtime_checkable
class PeerMatcher(Protocol):
    """Decides whether a verified caller ID is one a rule is about."""

    def matches(self, peer: SpiffeID) -> bool: ...

    def describe(self) -> str: ...


@dataclass(frozen=True, slots=True)
class ExactID:
    spiffe_id: SpiffeID

    def matches(self, peer: SpiffeID) -> bool:
        return peer == self.spiffe_id

    def describe(self) -> str:
        return str(self.spiffe_id)


@dataclass(frozen=True, slots=True)
class TrustDomain:
    name: str

    def matches(self, peer: SpiffeID) -> bool:
        return peer.trust_domain == self.name

    def describe(self) -> str:
        return f"any ID in trust domain {self.name} (spiffe://{self.name})"


@dataclass(frozen=True, slots=True)
class PathPrefix:
    """IDs strictly below ``spiffe://<trust_domain>/<segments...>``."""

    trust_domain: str
    segments: tuple[str, ...]

    def matches(self, peer: SpiffeID) -> bool:
        if peer.trust_domain != self.trust_domain:
            return False
        theirs = peer.segments
        return len(theirs) > len(self.segments) and theirs[: len(self.segments)] == self.segments

    def describe(self) -> str:
        return "spiffe://" + "/".join((self.trust_domain, *self.segments, "*"))


@dataclass(frozen=True, slots=True)
class AnyPeer:
    """Any caller with a valid SPIFFE ID (A43: a rule without ``source``, or ``"*"``)."""

    def matches(self, peer: SpiffeID) -> bool:
        return True

    def describe(self) -> str:
        return "any authenticated peer"


@dataclass(frozen=True, slots=True)
class IdPattern:
    """An A43 principal: a wildcard matched against the caller's SPIFFE ID string.

    gRPC matches principals against the URI SANs, else DNS SANs, else the
    subject. meshnode authorizes only certificates with exactly one URI SAN
    (the SPIFFE ID), so the URI SAN is the only thing a principal ever sees.
    """

    pattern: StringPattern

    def matches(self, peer: SpiffeID) -> bool:
        return self.pattern.matches(str(peer))

    def describe(self) -> str:
        return f"principal {str(self.pattern)!r}"


@dataclass(frozen=True, slots=True)
class AnyOf:
    members: tuple[PeerMatcher, ...]

    def matches(self, peer: SpiffeID) -> bool:
        return any(m.matches(peer) for m in self.members)

    def describe(self) -> str:
        if len(self.members) == 1:
            return self.members[0].describe()
        return "any of [" + ", ".join(m.describe() for m in self.members) + "]"


@dataclass(frozen=True, slots=True)
class AllOf:
    members: tuple[PeerMatcher, ...]

    def matches(self, peer: SpiffeID) -> bool:
        return all(m.matches(peer) for m in self.members)

    def describe(self) -> str:
        return "all of [" + ", ".join(m.describe() for m in self.members) + "]"


@dataclass(frozen=True, slots=True)
class Not:
    member: PeerMatcher

    def matches(self, peer: SpiffeID) -> bool:
        return not self.member.matches(peer)

    def describe(self) -> str:
        return f"not {self.member.describe()}"


def parse_peer(text: str, where: str = "peer") -> PeerMatcher:
    """Parse one allowlist entry (see the module docs); PolicyError names ``where``."""
    if not isinstance(text, str):
        raise PolicyError(reason=f"{where}: expected a SPIFFE ID string, got {type(text).__name__}", component="authz")
    if text == "*":
        return AnyPeer()
    prefix = text.endswith("/*")
    fixed = text[:-2] if prefix else text
    if "*" in fixed:
        raise PolicyError(
            reason=f"{where}: {text!r}: '*' is allowed only as a whole last path segment, "
            "as in 'spiffe://example.org/ns/prod/*'", component="authz"
        )
    try:
        sid = parse_spiffe_id(fixed)
    except InvalidSpiffeIdError as exc:
        raise PolicyError(f"authz: {where}: invalid SPIFFE ID {text!r}: {exc.reason}", reason=exc.reason,
                          value=text) from None
    if prefix:
        return PathPrefix(sid.trust_domain, sid.segments)
    if not sid.path:
        return TrustDomain(sid.trust_domain)
    return ExactID(sid)


#: What the rule builders accept for "which peers".
PeerSpec = str | SpiffeID | PeerMatcher | Iterable[str | SpiffeID | PeerMatcher]


def as_peer_matcher(spec: PeerSpec, where: str = "peers") -> PeerMatcher:
    """Turn a :data:`PeerSpec` into one matcher (a list becomes :class:`AnyOf`)."""
    if isinstance(spec, str):
        return parse_peer(spec, where)
    if isinstance(spec, SpiffeID):
        return ExactID(spec) if spec.path else TrustDomain(spec.trust_domain)
    if isinstance(spec, PeerMatcher):
        return spec
    if not isinstance(spec, Iterable):
        raise PolicyError(reason=f"{where}: expected SPIFFE ID strings or matchers, got {type(spec).__name__}",
                          component="authz")
    members = tuple(as_peer_matcher(item, f"{where}[{i}]") for i, item in enumerate(spec))
    if not members:
        raise PolicyError(
            reason=f"{where}: the list of peers is empty; a rule must name at least one peer "
            "(use 'spiffe://<trust-domain>' for a whole trust domain)", component="authz"
        )
    return members[0] if len(members) == 1 else AnyOf(members)
