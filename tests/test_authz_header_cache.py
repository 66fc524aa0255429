"""Header rules cost only where they apply (issue 11, class 4).

One A43 rule with a header condition used to make every call walk every
rule: 10,001 rules + 1 header rule served 14x fewer calls. Now a verdict
stays cached per (caller, method) unless a header rule's peers and method
match; then only those rules' headers are tested per call. These tests
count rule evaluations through a public hook (a counting PeerMatcher) over
real mTLS calls, and check the cached path decides exactly like a full
evaluation, for random policies and requests.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnode.authz import (
    ActivePolicy,
    AnyPeer,
    Authorizer,
    Effect,
    ExactID,
    Not,
    PathPrefix,
    PeerMatcher,
    Policy,
    Request,
    Rule,
    TrustDomain,
)
from meshnode.authz.patterns import parse_pattern
from meshnode.authz.scopes import AnyMethod, HeaderCondition, MethodPath, PathPattern, ServiceScope
from meshnode.devagent.ca import DevCA
from meshnode.spiffeid import SpiffeID, parse_spiffe_id
from tests.support.mtls import AuthorizedServer, status
from tests.support.policies import HEADER_KEYS, UNIVERSE_VALUES, headers, peer_ids, policies

ALPHA = "spiffe://example.org/node/alpha"
BETA = "spiffe://example.org/node/beta"
METHODS = ("/t.Probe/A", "/t.Probe/B", "/t.Other/A")


class SwitchablePolicy:
    """A policy source whose policy a test replaces (each replacement is a new version)."""

    def __init__(self, policy: Policy) -> None:
        self._active = ActivePolicy(policy, 1)

    def current(self) -> ActivePolicy:
        return self._active

    def set(self, policy: Policy) -> None:
        self._active = ActivePolicy(policy, self._active.version + 1)


@dataclass
class CountingPeers:
    """A PeerMatcher that counts how often a rule asks it (the rule is being evaluated)."""

    inner: PeerMatcher
    calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def matches(self, peer: SpiffeID) -> bool:
        with self._lock:
            self.calls += 1
        return self.inner.matches(peer)

    def describe(self) -> str:
        return self.inner.describe()


@given(policy=policies(), peer=peer_ids, method=st.sampled_from(["/a.S/M", "/b.S/M", "/a.S/Check"]),
       request_headers=headers)
@settings(max_examples=1000, deadline=None)
def test_resolve_then_headers_decides_exactly_like_a_full_evaluation(
    policy: Policy, peer: SpiffeID, method: str, request_headers: dict[str, str]
) -> None:
    residual = policy.resolve(peer, method)
    assert residual.decide(request_headers) == policy.decide(Request(peer, method, request_headers))
    assert all(r.headers and r.methods.matches(method) and r.peers.matches(peer) for r in residual.rules)


# random policies over the callers and methods the test server has
_peers = st.one_of(
    st.sampled_from([ALPHA, BETA]).map(lambda s: ExactID(parse_spiffe_id(s))),
    st.just(TrustDomain("example.org")),
    st.just(PathPrefix("example.org", ("node",))),
    st.just(AnyPeer()),
    st.sampled_from([ALPHA, BETA]).map(lambda s: Not(ExactID(parse_spiffe_id(s)))),
)
_methods = st.one_of(
    st.just(AnyMethod()),
    st.sampled_from(["t.Probe", "t.Other"]).map(ServiceScope),
    st.sampled_from(METHODS).map(MethodPath),
    st.sampled_from(["*/A", "/t.*", "/t.Probe/*"]).map(lambda p: PathPattern(parse_pattern(p))),
)
_calls = st.lists(
    st.tuples(
        st.sampled_from([ALPHA, BETA]),
        st.sampled_from(METHODS),
        st.lists(st.tuples(st.sampled_from(HEADER_KEYS), st.sampled_from(UNIVERSE_VALUES[1:])), max_size=3),
    ),
    min_size=1, max_size=8,
)


@pytest.fixture(scope="module")
def served() -> Any:
    source = SwitchablePolicy(Policy())
    authorizer = Authorizer(source, audit="none")
    with AuthorizedServer(DevCA("example.org"), authorizer, METHODS) as server:
        channels = {who: server.channel(who) for who in (ALPHA, BETA)}
        yield source, channels


@pytest.mark.slow
@given(policy=policies(_peers, _methods), calls=_calls)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_cached_calls_over_mtls_get_exactly_the_decision_of_a_full_evaluation(
    served: Any, policy: Policy, calls: list[tuple[str, str, list[tuple[str, str]]]]
) -> None:
    source, channels = served
    source.set(policy)
    for who, method, metadata in calls * 2:  # the second round hits the cache
        expected = policy.decide(Request.from_metadata(parse_spiffe_id(who), method, metadata))
        assert status(channels[who], method, metadata) == ("OK" if expected.allowed else "PERMISSION_DENIED")


def test_a_header_rule_does_not_make_every_call_walk_every_rule() -> None:
    others = [
        Rule(f"other-{i}", Effect.ALLOW, CountingPeers(ExactID(parse_spiffe_id(f"spiffe://example.org/w/{i}"))))
        for i in range(200)
    ]
    alpha = Rule("alpha", Effect.ALLOW, CountingPeers(ExactID(parse_spiffe_id(ALPHA))))
    debug = Rule(  # a header rule on one method only: no debug calls to t.Other/A
        "no-debug", Effect.DENY, CountingPeers(AnyPeer()), MethodPath("/t.Other/A"),
        (HeaderCondition("x-debug", (parse_pattern("*"),)),),
    )
    policy = Policy((debug, *others, alpha), name="big")
    counters = [r.peers for r in policy.rules]

    def evaluations() -> int:
        return sum(c.calls for c in counters)  # type: ignore[attr-defined]

    with AuthorizedServer(DevCA("example.org"), Authorizer(policy, audit="none"), METHODS) as server:
        channel = server.channel(ALPHA)
        assert status(channel, "/t.Probe/A") == "OK"
        first = evaluations()
        assert first == len(others) + 1  # the miss asked every rule for this method once
        for _ in range(30):
            assert status(channel, "/t.Probe/A") == "OK"
        assert evaluations() == first  # the header rule does not apply here: every call was a cache hit
        # where the header rule applies, only its headers are tested per call, no rule is walked again
        assert status(channel, "/t.Other/A") == "OK"
        second = evaluations()
        for i in range(10):
            assert status(channel, "/t.Other/A", [("x-debug", "1")]) == "PERMISSION_DENIED"
            assert status(channel, "/t.Other/A", [("x-trace", str(i))]) == "OK"
        assert evaluations() == second
        beta = server.channel(BETA)
        assert status(beta, "/t.Probe/A") == "PERMISSION_DENIED"
        assert status(beta, "/t.Other/A", [("x-debug", "1")]) == "PERMISSION_DENIED"
