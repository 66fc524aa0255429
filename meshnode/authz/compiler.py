"""Rules compiled for the policy analysis: matchers become formulas over string atoms.

A rule's peers compile to a formula over atoms on the caller's SPIFFE ID
string, its methods to one over the method path, each header condition to
one over that header's value (:mod:`meshnode.authz.formulas`). Only the
exact matcher types meshnode defines are compiled: a subclass or a custom
matcher may match differently, so it raises
:class:`~meshnode.authz.stringsets.AnalysisLimit` (the analysis then answers
"unknown", never a guess).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from meshnode.authz.formulas import FALSE, TRUE, AtomTable, Formula, conj, disj, neg
from meshnode.authz.matchers import AllOf, AnyOf, AnyPeer, ExactID, IdPattern, Not, PathPrefix, PeerMatcher, TrustDomain
from meshnode.authz.patterns import PatternKind
from meshnode.authz.scopes import (
    UNSUPPORTED_HEADERS,
    AnyMethod,
    AnyOfMethods,
    HeaderCondition,
    MethodPath,
    MethodScope,
    PathPattern,
    ServiceScope,
)
from meshnode.authz.stringsets import HEADER_VALUES, METHOD_PATHS, SPIFFE_IDS, AnalysisLimit
from meshnode.spiffeid import SCHEME

__all__ = ["Compiled", "Compiler", "Conditions", "RuleShape"]

Conditions = tuple[tuple[str, Formula], ...]  # header key -> formula over that key's values; all must hold


class RuleShape(Protocol):
    """What the analysis reads of a rule (:class:`~meshnode.authz.Rule` has it)."""

    @property
    def name(self) -> str: ...

    @property
    def peers(self) -> PeerMatcher: ...

    @property
    def methods(self) -> MethodScope: ...

    @property
    def headers(self) -> tuple[HeaderCondition, ...]: ...


@dataclass(frozen=True)
class Compiled:
    rule: RuleShape
    peer: Formula
    method: Formula
    headers: Conditions
    satisfiable: bool  # False: one of its header conditions can never hold


def _never_sent(key: str) -> bool:
    """Header keys a gRPC request never carries as text metadata (A43 refuses them in files)."""
    return (
        not key or key != key.lower() or key.startswith((":", "grpc-")) or key.endswith("-bin")
        or key in UNSUPPORTED_HEADERS
    )


class Compiler:
    """Matchers to formulas. Exact types only: a subclass may match differently, so it is unknown."""

    def __init__(self) -> None:
        self.peers = AtomTable(SPIFFE_IDS)
        self.methods = AtomTable(METHOD_PATHS)
        self.headers: dict[str, AtomTable] = {}

    def trust_domain(self, name: str) -> Formula:
        return disj((
            self.peers.atom(PatternKind.EXACT, SCHEME + name),
            self.peers.atom(PatternKind.PREFIX, SCHEME + name + "/"),
        ))

    def peer(self, m: PeerMatcher) -> Formula:
        if type(m) is AnyPeer:
            return TRUE
        if type(m) is ExactID:
            return self.peers.atom(PatternKind.EXACT, str(m.spiffe_id))
        if type(m) is TrustDomain:
            return self.trust_domain(m.name)
        if type(m) is PathPrefix:
            return self.peers.atom(PatternKind.PREFIX, SCHEME + "/".join((m.trust_domain, *m.segments)) + "/")
        if type(m) is IdPattern:
            return self.peers.atom(m.pattern.kind, m.pattern.value)
        if type(m) is AnyOf:
            return disj(self.peer(x) for x in m.members)
        if type(m) is AllOf:
            return conj(self.peer(x) for x in m.members)
        if type(m) is Not:
            return neg(self.peer(m.member))
        raise AnalysisLimit(f"its peer matcher {type(m).__name__} is not one the analysis knows")

    def method(self, s: MethodScope) -> Formula:
        if type(s) is AnyMethod:
            return TRUE
        if type(s) is ServiceScope:
            return self.methods.atom(PatternKind.PREFIX, "/" + s.service + "/")
        if type(s) is MethodPath:
            return self.methods.atom(PatternKind.EXACT, s.path)
        if type(s) is PathPattern:
            return self.methods.atom(s.pattern.kind, s.pattern.value)
        if type(s) is AnyOfMethods:
            return disj(self.method(x) for x in s.members)
        raise AnalysisLimit(f"its method scope {type(s).__name__} is not one the analysis knows")

    def header(self, h: HeaderCondition) -> tuple[str, Formula]:
        if type(h) is not HeaderCondition:
            raise AnalysisLimit(f"its header condition {type(h).__name__} is not one the analysis knows")
        table = self.headers.setdefault(h.key, AtomTable(HEADER_VALUES))
        if _never_sent(h.key):
            return h.key, FALSE
        return h.key, disj(table.atom(p.kind, p.value) for p in h.patterns)

    def rule(self, rule: RuleShape) -> Compiled:
        try:
            headers = tuple(self.header(h) for h in rule.headers)
            return Compiled(
                rule, self.peer(rule.peers), self.method(rule.methods), headers,
                all(f != FALSE for _, f in headers),
            )
        except AnalysisLimit as exc:
            raise AnalysisLimit(f"rule {rule.name!r}: {exc.reason}") from None
