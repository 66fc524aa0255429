"""The policy model: rules that allow or deny callers per method, and how they decide.

A :class:`Rule` is *peers* x *methods* (x headers, A43 only) with an
:class:`Effect`. A :class:`Policy` decides a :class:`Request` in a fixed
order, the same as gRPC's A43 engine:

1. any matching deny rule denies (deny always wins over allow);
2. else any matching allow rule allows;
3. else the call is denied (nothing matched).

Every decision names the rule that made it, and :meth:`Policy.explain`
shows for each rule why it did or did not match.

Building policies in code (class-level allowlists, per-method decorators)::

    Policy((
        allow("spiffe://example.org/ns/prod/*", service="meshnode.demo.v1.Echo"),
        allow(["spiffe://example.org/node/alpha"], method="/meshnode.demo.v1.Relay/Forward"),
        restrict("spiffe://example.org/node/alpha", method="/meshnode.demo.v1.Relay/Forward"),
        deny("spiffe://example.org/node/gamma"),
    ), name="node")

:func:`allow` adds callers, :func:`restrict` makes a method *only* callable
by the given peers whatever else allows (it is a deny rule for everyone
else), and :func:`merge_policies` combines several policies into one.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from meshnode.authz.audit import AuditCondition
from meshnode.authz.matchers import AnyPeer, Not, PeerMatcher, PeerSpec, as_peer_matcher, parse_peer
from meshnode.authz.ruleindex import PeerIndex
from meshnode.authz.safety import SafetyReport, check_rules
from meshnode.authz.scopes import (
    AnyMethod,
    HeaderCondition,
    MethodPath,
    MethodScope,
    ServiceScope,
    check_method_path,
    check_service_name,
)
from meshnode.errors import PolicyError
from meshnode.spiffeid import SpiffeID

__all__ = [
    "Decision",
    "Effect",
    "Explanation",
    "Policy",
    "Request",
    "Residual",
    "Rule",
    "RuleTrace",
    "allow",
    "deny",
    "merge_policies",
    "policy_from_allowlist",
    "restrict",
]

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class Effect(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Request:
    """What a decision looks at: the verified caller, the method and (A43) headers."""

    peer: SpiffeID
    method: str
    headers: Mapping[str, str] = field(default_factory=lambda: _NO_HEADERS)

    @classmethod
    def from_metadata(
        cls, peer: SpiffeID, method: str, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> Request:
        """Join repeated keys with ',' (A43); binary (``-bin``) values are left out."""
        joined: dict[str, str] = {}
        for key, value in metadata or ():
            if isinstance(value, str):
                joined[key] = f"{joined[key]},{value}" if key in joined else value
        return cls(peer, method, MappingProxyType(joined))


@dataclass(frozen=True, slots=True)
class RuleTrace:
    rule: Rule
    matched: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    effect: Effect
    peers: PeerMatcher = field(default_factory=AnyPeer)
    methods: MethodScope = field(default_factory=AnyMethod)
    headers: tuple[HeaderCondition, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise PolicyError(reason="every rule needs a non-empty name (it appears in audit records)",
                              component="authz")
        object.__setattr__(self, "headers", tuple(self.headers))

    def matches(self, request: Request) -> bool:
        return (
            self.methods.matches(request.method)
            and self.peers.matches(request.peer)
            and all(h.matches(request.headers) for h in self.headers)
        )

    def explain(self, request: Request) -> RuleTrace:
        checks = [
            (self.peers.matches(request.peer), f"peer {request.peer}", self.peers.describe()),
            (self.methods.matches(request.method), f"method {request.method}", self.methods.describe()),
        ]
        checks += [(h.matches(request.headers), "request", h.describe()) for h in self.headers]
        reasons = tuple(f"{what} {'matches' if ok else 'does not match'} {how}" for ok, what, how in checks)
        return RuleTrace(self, all(ok for ok, _, _ in checks), reasons)

    def describe(self) -> str:
        text = f"{self.effect.value} {self.peers.describe()} on {self.methods.describe()}"
        return text + "".join(f" if {h.describe()}" for h in self.headers)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome: ``rule`` is the deciding rule's name, None when nothing matched."""

    allowed: bool
    rule: str | None
    reason: str


_NO_MATCH = Decision(False, None, "no allow rule matched (default deny)")


def _decision_of(rule: Rule) -> Decision:
    if rule.effect is Effect.DENY:
        return Decision(False, rule.name, f"deny rule {rule.name!r} matched")
    return Decision(True, rule.name, f"allow rule {rule.name!r} matched")


@dataclass(frozen=True, slots=True)
class Residual:
    """What is left of a decision once the caller and the method are known (:meth:`Policy.resolve`).

    ``rules``: the rules with header conditions whose peers and methods
    match, in decision order; the first whose headers all match decides.
    When none does, ``fallback`` decides. No ``rules``: ``fallback`` is the
    decision for every request of that caller and method.
    """

    rules: tuple[Rule, ...]
    fallback: Decision
    outcomes: tuple[Decision, ...] = field(init=False, repr=False)  # rules[i]'s decision, then fallback

    def __post_init__(self) -> None:
        object.__setattr__(self, "outcomes", (*(_decision_of(r) for r in self.rules), self.fallback))

    @property
    def final(self) -> bool:
        return not self.rules

    def pick(self, headers: Mapping[str, str]) -> int:
        """The index in ``outcomes`` of the decision for a request with these headers."""
        for i, rule in enumerate(self.rules):
            if all(h.matches(headers) for h in rule.headers):
                return i
        return len(self.rules)

    def decide(self, headers: Mapping[str, str]) -> Decision:
        return self.outcomes[self.pick(headers)]


@dataclass(frozen=True)
class Explanation:
    decision: Decision
    traces: tuple[RuleTrace, ...]

    def render(self) -> str:
        d = self.decision
        verdict = "ALLOW" if d.allowed else "DENY"
        lines = [f"decision: {verdict}", f"rule: {d.rule or '(none: default deny)'}", f"reason: {d.reason}"]
        lines.append("rules (deny rules first; the first match decides):")
        for t in self.traces:
            mark = "MATCH" if t.matched else "no match"
            lines.append(f"  [{t.rule.effect.value}] {t.rule.name}: {mark}")
            lines.extend(f"      {r}" for r in t.reasons)
        return "\n".join(lines)


@dataclass(frozen=True)
class Policy:
    """An immutable, ordered set of rules. ``audit`` comes from a policy file, if it set one."""

    rules: tuple[Rule, ...] = ()
    name: str = "policy"
    audit: AuditCondition | None = None
    deny_rules: tuple[Rule, ...] = field(init=False, repr=False)
    allow_rules: tuple[Rule, ...] = field(init=False, repr=False)
    needs_headers: bool = field(init=False, repr=False)
    ordered: tuple[Rule, ...] = field(init=False, repr=False)  # deny rules, then allow rules
    #: which of ``ordered`` may match a caller: exact IDs and prefixes looked up, not scanned
    index: PeerIndex = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rules = tuple(self.rules)
        for r in rules:
            if not isinstance(r, Rule):
                raise PolicyError(reason=f"policy {self.name!r}: {r!r} is not a Rule", component="authz")
        object.__setattr__(self, "rules", rules)
        object.__setattr__(self, "deny_rules", tuple(r for r in rules if r.effect is Effect.DENY))
        object.__setattr__(self, "allow_rules", tuple(r for r in rules if r.effect is Effect.ALLOW))
        object.__setattr__(self, "needs_headers", any(r.headers for r in rules))
        object.__setattr__(self, "ordered", (*self.deny_rules, *self.allow_rules))
        object.__setattr__(self, "index", PeerIndex([r.peers for r in self.ordered]))

    def decide(self, request: Request) -> Decision:
        """The decision for one request: the first rule (deny rules first) that matches it.

        Only the rules :attr:`index` names for the caller are tested; the
        others cannot match it, so the outcome is that of a full scan.
        """
        ordered = self.ordered
        for i in self.index.candidates(request.peer):
            r = ordered[i]
            if r.matches(request):
                return _decision_of(r)
        return _NO_MATCH

    def resolve(self, peer: SpiffeID, method: str) -> Residual:
        """The decision for ``peer`` calling ``method`` as far as headers do not matter.

        ``resolve(p, m).decide(headers) == decide(Request(p, m, headers))``
        for every ``headers``; only rules with header conditions whose
        peers and methods match are left to evaluate per request.
        """
        pending: list[Rule] = []
        ordered = self.ordered
        for i in self.index.candidates(peer):
            r = ordered[i]
            if r.methods.matches(method) and r.peers.matches(peer):
                if not r.headers:
                    return Residual(tuple(pending), _decision_of(r))
                pending.append(r)
        return Residual(tuple(pending), _NO_MATCH)

    def explain(self, request: Request) -> Explanation:
        traces = tuple(r.explain(request) for r in self.ordered)
        return Explanation(self.decide(request), traces)

    def check_production(
        self,
        *,
        accepted: Iterable[str] | None = None,
        counted: Callable[[Rule], bool] | None = None,
        health: bool = False,
    ) -> tuple[str, ...]:
        """Raise PolicyError when the policy can only ever deny; return what could not be decided.

        A server that denies every call is a misconfiguration (an empty
        ``[authz] allow``, a catch-all deny rule in any spelling, allow
        rules no accepted caller can match), not a safe default: refuse to
        start and say what to fix. The check evaluates the compiled
        matchers (:mod:`meshnode.authz.safety`). ``accepted``: the trust
        domains whose callers the node accepts (None: any). ``counted``:
        which allow rules count as "a policy" (the node leaves its built-in
        health rules out). ``health``: also refuse a policy that denies
        the health methods to every caller. The returned notes (questions
        the analysis could not answer) deserve a warning.
        """
        allows = tuple(r for r in self.allow_rules if counted is None or counted(r))
        report: SafetyReport = check_rules(
            self.name, self.deny_rules, allows, accepted=accepted,
            health_rules=self.allow_rules if health else None,
        )
        if report.problems:
            raise PolicyError(reason=report.problems[0], component="authz")
        return report.notes


def _scope(service: str | None, method: str | None) -> MethodScope:
    if service is not None and method is not None:
        raise PolicyError(
            reason="give a rule either service= or method=, not both (a method implies its service)", component="authz"
        )
    if service is not None:
        return ServiceScope(check_service_name(service))
    if method is not None:
        return MethodPath(check_method_path(method))
    return AnyMethod()


def _rule(effect: Effect, peers: PeerMatcher, scope: MethodScope, name: str | None) -> Rule:
    return Rule(name or f"{effect.value} {peers.describe()} on {scope.describe()}", effect, peers, scope)


def allow(
    peers: PeerSpec, *, service: str | None = None, method: str | None = None, name: str | None = None
) -> Rule:
    """Allow ``peers`` to call everything, one ``service`` (``pkg.Svc``) or one ``method`` (``/pkg.Svc/M``)."""
    return _rule(Effect.ALLOW, as_peer_matcher(peers), _scope(service, method), name)


def deny(
    peers: PeerSpec, *, service: str | None = None, method: str | None = None, name: str | None = None
) -> Rule:
    """Deny ``peers`` (wins over every allow rule) on the given scope."""
    return _rule(Effect.DENY, as_peer_matcher(peers), _scope(service, method), name)


def restrict(
    peers: PeerSpec, *, service: str | None = None, method: str | None = None, name: str | None = None
) -> Rule:
    """Only ``peers`` may call the scope, whatever other rules allow (denies everyone else)."""
    matcher = as_peer_matcher(peers)
    scope = _scope(service, method)
    return Rule(name or f"only {matcher.describe()} on {scope.describe()}", Effect.DENY, Not(matcher), scope)


def policy_from_allowlist(
    entries: Iterable[str], *, where: str = "[authz] allow", name: str = "allowlist"
) -> Policy:
    """One allow rule per allowlist string (exact ID, ``spiffe://td``, ``spiffe://td/prefix/*``)."""
    if isinstance(entries, str):
        raise PolicyError(reason=f"{where} must be a list of SPIFFE IDs, not one string", component="authz")
    rules = tuple(
        Rule(f"{where}: {entry}", Effect.ALLOW, parse_peer(entry, f"{where}[{i}]"), AnyMethod())
        for i, entry in enumerate(entries)
    )
    return Policy(rules, name=name)


def merge_policies(*policies: Policy, name: str | None = None) -> Policy:
    """One policy holding every rule of ``policies``; audit asks for what any of them asks."""
    audit: AuditCondition | None = None
    for p in policies:
        if p.audit is not None:
            audit = p.audit.union(audit)
    rules = tuple(r for p in policies for r in p.rules)
    return Policy(rules, name=name or "+".join(p.name for p in policies) or "policy", audit=audit)
