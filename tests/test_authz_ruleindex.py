"""Decisions look rules up by caller instead of scanning them all (issue 18, Scale).

A miss of the verdict cache used to test every rule of the policy: with
10,000 rules, each new caller or policy version cost a walk of all of
them. :class:`~meshnode.authz.ruleindex.PeerIndex` files rules under their
exact IDs and prefixes; these tests check that a decision through the index
is exactly the decision of a full scan, for random policies of every
matcher type, and count (through a public seam: a method scope that counts
its calls) that a decision among 10,000 indexed rules tests only the few
that can match.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from meshnode.authz import Effect, Policy, Request, Rule, parse_a43, policy_from_allowlist
from meshnode.authz.policy import Decision
from meshnode.spiffeid import SpiffeID, parse_spiffe_id
from tests.support.policies import UNIVERSE_METHODS, UNIVERSE_PEERS, headers, policies

RULES = 10_000


def full_scan(policy: Policy, request: Request) -> Decision:
    """The reference: the first rule of every rule, deny rules first, that matches."""
    for rule in policy.ordered:
        if rule.matches(request):
            verdict = "deny" if rule.effect is Effect.DENY else "allow"
            return Decision(rule.effect is Effect.ALLOW, rule.name, f"{verdict} rule {rule.name!r} matched")
    return Decision(False, None, "no allow rule matched (default deny)")


@given(policy=policies(), peer=st.sampled_from(UNIVERSE_PEERS), method=st.sampled_from(UNIVERSE_METHODS),
       request_headers=headers)
@settings(max_examples=1500, deadline=None)
def test_indexed_decision_is_the_decision_of_a_full_scan(
    policy: Policy, peer: SpiffeID, method: str, request_headers: dict[str, str]
) -> None:
    request = Request(peer, method, request_headers)
    assert policy.decide(request) == full_scan(policy, request)
    assert policy.resolve(peer, method).decide(request_headers) == full_scan(policy, request)


@dataclass
class CountingScope:
    """Every method: counts how often a rule's methods are tested (the rule is being evaluated)."""

    calls: int = 0

    def matches(self, method: str) -> bool:
        self.calls += 1
        return True

    def describe(self) -> str:
        return "every method (counted)"


def _counted(policy: Policy, scope: CountingScope) -> Policy:
    rules = tuple(Rule(r.name, r.effect, r.peers, scope, r.headers) for r in policy.rules)
    return Policy(rules, name=policy.name)


def test_a_decision_among_10000_allowlist_rules_tests_only_the_matching_ones() -> None:
    entries = [f"spiffe://example.org/svc/{i}" if i % 2 else f"spiffe://example.org/team-{i}/*"
               for i in range(RULES)]
    scope = CountingScope()
    policy = _counted(policy_from_allowlist(entries), scope)
    last = parse_spiffe_id(f"spiffe://example.org/svc/{RULES - 1}")
    below = parse_spiffe_id("spiffe://example.org/team-0/a/b")
    stranger = parse_spiffe_id("spiffe://example.org/svc/none")

    assert policy.resolve(last, "/a.S/M").fallback.rule == f"[authz] allow: spiffe://example.org/svc/{RULES - 1}"
    assert policy.decide(Request(below, "/a.S/M")).rule == "[authz] allow: spiffe://example.org/team-0/*"
    assert not policy.decide(Request(stranger, "/a.S/M")).allowed
    assert scope.calls == 2  # one rule tested for each allowed caller, none for the stranger


def test_a43_principals_exact_and_prefix_are_looked_up() -> None:
    allow = [{"name": f"r{i}", "source": {"principals": [f"spiffe://example.org/bench/other-{i}"]}}
             for i in range(RULES - 2)]
    allow.append({"name": "prefix", "source": {"principals": ["spiffe://example.org/jobs/nightly*"]}})
    allow.append({"name": "anyone-on-health", "request": {"paths": ["/grpc.health.v1.Health/*"]}})
    doc = {"name": "big", "allow_rules": allow}
    scope = CountingScope()
    policy = _counted(parse_a43(json.dumps(doc), "big.json", []), scope)
    nightly = parse_spiffe_id("spiffe://example.org/jobs/nightly-7")
    assert policy.resolve(nightly, "/a.S/M").fallback.rule == "prefix"
    assert policy.decide(Request(parse_spiffe_id("spiffe://example.org/bench/other-42"), "/a.S/M")).rule == "r42"
    # the deciding rule only: the rule without a source (a candidate for every caller) comes after it
    assert scope.calls == 2
