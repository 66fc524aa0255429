"""Which rules could match a caller, found by lookup instead of a scan of every rule.

A policy of 10,000 allow rules, one per caller, made every decision that
missed the verdict cache walk all 10,000 matchers (~2 ms in Python). Most
peer matchers are an exact ID or a prefix of the ID string, so
:class:`PeerIndex` files each rule under those strings:

======================================  ==========================================
``ExactID``, principal ``"id"``         exact key ``str(id)``
``PathPrefix`` ``spiffe://td/a/*``      prefix key ``spiffe://td/a/``
``TrustDomain`` ``spiffe://td``         exact key ``spiffe://td`` and prefix key
                                        ``spiffe://td/``
principal ``"spiffe://td/a*"``          prefix key ``spiffe://td/a``
``AnyOf`` of the above                  every member's keys
anything else (``*``, suffixes,         no key: a candidate for every caller
``Not``, ``AllOf``, custom matchers)
======================================  ==========================================

These are the same string atoms the policy analysis compiles matchers to
(:class:`~meshnode.authz.compiler.Compiler`). A lookup costs one dict probe
for the exact key and one per distinct prefix length, whatever the number
of rules. The index only narrows: every candidate is still decided by its
own matcher, in policy order, so a decision is exactly the one a full scan
makes (``tests/test_authz_ruleindex.py`` compares them). Only the exact
matcher types meshnode defines are indexed: a subclass may match
differently, so it is always a candidate.
"""

from __future__ import annotations

from collections.abc import Sequence

from meshnode.authz.matchers import AnyOf, ExactID, IdPattern, PathPrefix, PeerMatcher, TrustDomain
from meshnode.authz.patterns import PatternKind
from meshnode.spiffeid import SCHEME, SpiffeID

__all__ = ["PeerIndex"]

_Keys = tuple[tuple[str, ...], tuple[str, ...]]  # (exact keys, prefix keys)


def _keys(m: PeerMatcher) -> _Keys | None:
    """The exact and prefix strings under which ``m`` can match, None when it is not indexable."""
    if type(m) is ExactID:
        return (str(m.spiffe_id),), ()
    if type(m) is PathPrefix:
        return (), (SCHEME + "/".join((m.trust_domain, *m.segments)) + "/",)
    if type(m) is TrustDomain:
        return (SCHEME + m.name,), (SCHEME + m.name + "/",)
    if type(m) is IdPattern:
        if m.pattern.kind is PatternKind.EXACT:
            return (m.pattern.value,), ()
        if m.pattern.kind is PatternKind.PREFIX and m.pattern.value:
            return (), (m.pattern.value,)
        return None
    if type(m) is AnyOf:
        exact: list[str] = []
        prefixes: list[str] = []
        for member in m.members:
            keys = _keys(member)
            if keys is None:
                return None
            exact += keys[0]
            prefixes += keys[1]
        return tuple(exact), tuple(prefixes)
    return None


class PeerIndex:
    """Positions (in ``matchers`` order) of the matchers that may match a caller; the rest cannot."""

    __slots__ = ("_always", "_exact", "_lengths", "_prefixes", "size")

    def __init__(self, matchers: Sequence[PeerMatcher]) -> None:
        self.size = len(matchers)
        exact: dict[str, list[int]] = {}
        prefixes: dict[str, list[int]] = {}
        always: list[int] = []
        for position, matcher in enumerate(matchers):
            keys = _keys(matcher)
            if keys is None:
                always.append(position)
                continue
            for key in set(keys[0]):
                exact.setdefault(key, []).append(position)
            for key in set(keys[1]):
                prefixes.setdefault(key, []).append(position)
        self._always = tuple(always)
        self._exact = {k: tuple(v) for k, v in exact.items()}
        self._prefixes = {k: tuple(v) for k, v in prefixes.items()}
        self._lengths = tuple(sorted({len(k) for k in prefixes}))

    @property
    def unindexed(self) -> int:
        """How many matchers are candidates for every caller (no exact or prefix key)."""
        return len(self._always)

    def candidates(self, peer: SpiffeID) -> Sequence[int]:
        """Ascending positions of every matcher that may match ``peer`` (a superset of those that do)."""
        text = str(peer)
        found: list[int] = list(self._always)
        hit = self._exact.get(text)
        if hit is not None:
            found += hit
        prefixes = self._prefixes
        for length in self._lengths:
            if length > len(text):
                break
            more = prefixes.get(text[:length])
            if more is not None:
                found += more
        if len(found) > 1:
            found = sorted(set(found))
        return found
