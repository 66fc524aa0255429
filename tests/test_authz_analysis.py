"""The production check reads what rules match, not how they are spelled (issue 11, class 4).

A policy that can only deny is refused in production whatever the spelling
of "everything"; a policy that denies health to every caller too. The
analysis behind it is checked against brute force over a finite universe of
requests, for random policies using every matcher type.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnode.authz import Effect, PeerMatcher, Policy, Request, Rule, allow, deny, parse_a43, policy_from_allowlist
from meshnode.authz import restrict as only
from meshnode.authz.analysis import Analyzer, Answer
from meshnode.authz.patterns import PatternKind, StringPattern, parse_pattern
from meshnode.authz.safety import check_rules
from meshnode.authz.stringsets import HEADER_VALUES, SPIFFE_IDS, truth_vectors
from meshnode.errors import PolicyError
from meshnode.spiffeid import SpiffeID
from tests.support.policies import HEADER_SETS, HEALTH_CHECK, UNIVERSE_METHODS, UNIVERSE_PEERS, policies

ORG = ["example.org"]
TWO = ["example.org", "other.org"]


def a43(deny_rules: list[dict[str, object]], allow_rules: list[dict[str, object]] | None = None) -> Policy:
    text = json.dumps({"name": "p", "deny_rules": deny_rules, "allow_rules": allow_rules or [{"name": "all"}]})
    return parse_a43(text)


def who(*principals: str) -> dict[str, object]:
    return {"source": {"principals": list(principals)}}


def paths(*items: str) -> dict[str, object]:
    return {"request": {"paths": list(items)}}


def header(key: str, *values: str) -> dict[str, object]:
    return {"request": {"headers": [{"key": key, "values": list(values)}]}}


EVERY_CALL = "matches every caller and every method"
NEVER = "can never allow a call"
HEALTH = "to every caller, so health checks"

REFUSED = [
    # every spelling of "every caller" or "every method" in one deny rule
    ("A43 principal spiffe://*", a43([{"name": "d", **who("spiffe://*")}]), None, EVERY_CALL),
    ("A43 principal *", a43([{"name": "d", **who("*")}]), None, EVERY_CALL),
    ("A43 path /*", a43([{"name": "d", **paths("/*")}]), None, EVERY_CALL),
    ("A43 path *", a43([{"name": "d", **paths("*")}]), None, EVERY_CALL),
    ("A43 principal prefix of the only trust domain", a43([{"name": "d", **who("spiffe://example.org/*")}]), ORG,
     EVERY_CALL),
    ("A43 principal prefix spiffe://ex*", a43([{"name": "d", **who("spiffe://ex*")}]), ORG, EVERY_CALL),
    ("A43 two principals, one per trust domain",
     a43([{"name": "d", **who("spiffe://example.org/*", "spiffe://other.org/*")}]), TWO, EVERY_CALL),
    ("A43 two paths that split the methods", a43([{"name": "d", **paths("/a*", "/*")}]), None, EVERY_CALL),
    ("meshnode trust domain deny", Policy((allow("*"), deny("spiffe://example.org", name="d"))), ORG, EVERY_CALL),
    ("meshnode prefix deny", Policy((allow("*"), deny("spiffe://example.org/*", name="d"))), ORG, EVERY_CALL),
    ("meshnode * deny", Policy((allow("spiffe://example.org/a"), deny("*", name="d"))), None, EVERY_CALL),
    # two deny rules that only together cover everything
    ("two deny rules split the trust domains",
     a43([{"name": "d1", **who("spiffe://example.org/*")}, {"name": "d2", **who("spiffe://other.org/*")}]), TWO,
     NEVER),
    ("two deny rules split the methods",
     a43([{"name": "d1", **paths("/grpc.*")}, {"name": "d2", **paths("*/Check", "*/Watch")}],
         [{"name": "health", **paths("/grpc.health.v1.Health/*")}]), None, NEVER),
    # allow lists that can never match
    ("allow rules outside the accepted trust domains",
     a43([], [{"name": "a", **who("spiffe://other.org/x")}, {"name": "b", **who("spiffe://third.org/*")}]), ORG,
     "allow rule 'a' matches no caller of an accepted trust domain"),
    ("allowlist outside the accepted trust domains", policy_from_allowlist(["spiffe://other.org"]), ORG, NEVER),
    ("allow rule whose header conditions contradict",
     a43([], [{"name": "a", "request": {"headers": [{"key": "x-env", "values": ["prod"]},
                                                    {"key": "x-env", "values": ["dev"]}]}}]), None, NEVER),
    ("allow rule needs a header every value of which is denied",
     a43([{"name": "d", **header("x-env", "*")}], [{"name": "a", **header("x-env", "prod*")}]), None,
     "every call allow rule 'a' matches is denied by deny rule 'd'"),
    ("allow only what a restrict rule forbids",
     Policy((allow("spiffe://example.org/a", name="a"), only("spiffe://example.org/b"))), None, NEVER),
    # health denied to every caller, other calls allowed
    ("A43 deny on the health service", a43([{"name": "d", **paths("/grpc.health.v1.Health/*")}]), ORG, HEALTH),
    ("A43 deny on */Check and */Watch", a43([{"name": "d", **paths("*/Check", "*/Watch")}]), ORG, HEALTH),
    ("meshnode deny on the health service", Policy((allow("*"), deny("*", service="grpc.health.v1.Health"))), ORG,
     HEALTH),
]


@pytest.mark.parametrize(("policy", "accepted", "message"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_production_refuses_every_spelling_of_deny_everything(
    policy: Policy, accepted: list[str] | None, message: str
) -> None:
    with pytest.raises(PolicyError, match=message) as err:
        policy.check_production(accepted=accepted, health=True)
    assert str(err.value).startswith("authz: policy ")


ACCEPTED = [
    ("deny with a header condition: a caller can leave the header out", a43([{"name": "d", **header("x", "*")}]), ORG),
    ("deny one trust domain of two", a43([{"name": "d", **who("spiffe://example.org/*")}]), TWO),
    ("deny a prefix inside the trust domain", a43([{"name": "d", **who("spiffe://example.org/ns/*")}]), ORG),
    ("deny every path but one", a43([{"name": "d", **paths("/a.*")}]), None),
    ("deny a suffix", a43([{"name": "d", **who("*/admin")}]), ORG),
    ("allow by header where the deny header is narrower",
     a43([{"name": "d", **header("x-env", "prod")}], [{"name": "a", **header("x-env", "prod*")}]), None),
    ("one live allow rule among dead ones",
     a43([], [{"name": "dead", **who("spiffe://other.org/x")}, {"name": "live", **who("spiffe://example.org/x")}]),
     ORG),
    ("restrict leaves its peers", Policy((allow("*"), only("spiffe://example.org/b"))), ORG),
]


@pytest.mark.parametrize(("policy", "accepted"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_production_accepts_policies_that_allow_something(policy: Policy, accepted: list[str] | None) -> None:
    assert policy.check_production(accepted=accepted, health=True) == ()


@dataclass(frozen=True)
class EveryOtherCaller:
    """A matcher the analysis cannot see into."""

    def matches(self, peer: SpiffeID) -> bool:
        return len(str(peer)) % 2 == 0

    def describe(self) -> str:
        return "callers with an even-length ID"


def test_what_the_analysis_cannot_decide_is_a_note_not_a_verdict() -> None:
    opaque: PeerMatcher = EveryOtherCaller()
    policy = Policy((Rule("odd", Effect.ALLOW, opaque),), name="custom")
    notes = policy.check_production(accepted=ORG)
    assert notes and "EveryOtherCaller" in notes[0] and "could not decide" in notes[0]
    huge = a43([{"name": f"d{i}", **who(f"spiffe://example.org/n{i}/*")} for i in range(40)],
               [{"name": f"a{i}", **who(f"spiffe://example.org/n{i}/*")} for i in range(40)])
    with pytest.raises(PolicyError, match="can never allow a call"):  # each allow rule has its own deny rule
        huge.check_production(accepted=ORG)  # decided within the default work budget...
    report = check_rules("huge", huge.deny_rules, huge.allow_rules, accepted=ORG, budget=200)
    assert report.problems == () and "too large to analyse" in " ".join(report.notes)  # ...a note beyond it


def brute_force(
    allow_rule: Rule | None, denies: Sequence[Rule], accepted: frozenset[str] | None, method: str | None
) -> bool:
    """Is some request of the universe matched by ``allow_rule`` (None: any) and by no deny rule?"""
    for peer in UNIVERSE_PEERS:
        if accepted is not None and peer.trust_domain not in accepted:
            continue
        if allow_rule is not None and not allow_rule.peers.matches(peer):
            continue
        by_peer = [d for d in denies if d.peers.matches(peer)]
        for m in UNIVERSE_METHODS:
            if (method is not None and m != method) or (allow_rule is not None and not allow_rule.methods.matches(m)):
                continue
            hit = [d for d in by_peer if d.methods.matches(m)]
            if any(not d.headers for d in hit):
                continue
            for headers in HEADER_SETS:
                if allow_rule is not None and not all(c.matches(headers) for c in allow_rule.headers):
                    continue
                if not any(all(c.matches(headers) for c in d.headers) for d in hit):
                    return True
    return False


@pytest.mark.slow
@given(policy=policies(), accepted=st.sampled_from([None, frozenset({"a.org"}), frozenset({"a.org", "b.org"})]))
@settings(max_examples=120, deadline=None)
def test_the_analysis_agrees_with_brute_force_over_a_universe_of_requests(
    policy: Policy, accepted: frozenset[str] | None
) -> None:
    analyzer = Analyzer(accepted)
    for allow_rule, method in itertools.product((None, *policy.allow_rules), (None, HEALTH_CHECK)):
        answer, example, why = analyzer.answer(allow_rule, policy.deny_rules, method=method)
        assert answer is not Answer.UNKNOWN, why
        if brute_force(allow_rule, policy.deny_rules, accepted, method):
            assert answer is Answer.YES  # never "nothing" when something is there
        if example is not None:  # every example is a real request the rules treat as claimed
            request = Request(example.peer, example.method, example.headers)
            assert not any(d.matches(request) for d in policy.deny_rules)
            assert accepted is None or example.peer.trust_domain in accepted
            assert method is None or example.method == method
            if allow_rule is not None:
                assert allow_rule.matches(request) and policy.decide(request).allowed


_VALUE_PATTERN = st.sampled_from(["*", "p", "p*", "*q", "pq", "qp*", "*pz", "", "z"]).map(parse_pattern)


@given(atoms=st.lists(_VALUE_PATTERN, min_size=1, max_size=5))
@settings(max_examples=200, deadline=None)
def test_truth_vectors_are_exactly_the_answers_some_string_gives(atoms: list[StringPattern]) -> None:
    found = truth_vectors(atoms, HEADER_VALUES)
    for vector, witness in found.items():
        assert vector == frozenset(i for i, a in enumerate(atoms) if a.matches(witness))
    for n in range(6):
        for chars in itertools.product("pqz", repeat=n):
            text = "".join(chars)
            assert frozenset(i for i, a in enumerate(atoms) if a.matches(text)) in found, text


def test_caller_witnesses_are_valid_svid_ids() -> None:
    atoms = [
        StringPattern(PatternKind.PREFIX, "spiffe://example.org/"),
        StringPattern(PatternKind.SUFFIX, "/x"),
        StringPattern(PatternKind.EXACT, "spiffe://example.org/a/x"),
        StringPattern(PatternKind.PREFIX, "spiffe://example.org/."),
    ]
    found = truth_vectors(atoms, SPIFFE_IDS)
    assert frozenset({0, 1, 2}) in found and frozenset({0, 1}) in found and frozenset({1}) in found
    assert frozenset({0, 3}) in found  # e.g. spiffe://example.org/.x, where "." starts a longer segment
    for vector, text in found.items():
        assert SPIFFE_IDS.valid(text), text
        assert vector == frozenset(i for i, a in enumerate(atoms) if a.matches(text))
