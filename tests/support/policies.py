"""Random policies over a small vocabulary, and a finite universe of requests to check them on.

The vocabulary is small on purpose: patterns and requests share their
pieces (trust domains, segments, services, header values), so the random
rules overlap, nest and contradict each other often. Every matcher type
of the policy model appears: exact IDs, trust domains, path prefixes, A43
wildcards on IDs and paths, services, methods, Not/AnyOf/AllOf, and header
conditions on deny and allow rules.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import strategies as st

from meshnode.authz import AllOf, AnyOf, AnyPeer, Effect, ExactID, IdPattern, Not, PathPrefix, Policy, Rule, TrustDomain
from meshnode.authz.patterns import parse_pattern
from meshnode.authz.scopes import AnyMethod, AnyOfMethods, HeaderCondition, MethodPath, PathPattern, ServiceScope
from meshnode.spiffeid import parse_spiffe_id

TRUST_DOMAINS = ("a.org", "b.org")
SEGMENTS = ("x", "y", "xy")
HEADER_KEYS = ("x-k", "x-j")
HEALTH_CHECK = "/grpc.health.v1.Health/Check"

#: requests to check decisions on: every trust domain and segment of the vocabulary, plus fresh ones
UNIVERSE_PEERS = tuple(
    parse_spiffe_id(f"spiffe://{td}/" + "/".join(path))
    for td in (*TRUST_DOMAINS, "ab.org", "c.org")
    for n in (1, 2)
    for path in itertools.product((*SEGMENTS, "z"), repeat=n)
)
UNIVERSE_METHODS = (
    "/a.S/M", "/a.S/N", "/b.S/M", "/a.Sx/M", "/a.S/Check", "/z.Z/Q", HEALTH_CHECK, "/grpc.health.v1.Health/Watch",
)
UNIVERSE_VALUES = (None, "", "p", "pq", "q", "z", "qp")

_ID_PATTERNS = (
    "*", "spiffe://*", "spiffe://a*", "spiffe://a.org/*", "spiffe://a.org/x*", "spiffe://b.org/x/y",
    "*/x", "*/xy", "*y", "*.org/x",
)
_PATH_PATTERNS = ("*", "/*", "/a.*", "/a.S/*", "*/M", "*Check", "/a.S/M", HEALTH_CHECK, "/grpc.health.v1.Health/*")
_VALUE_PATTERNS = ("*", "p", "p*", "*q", "pq", "")

peer_ids = st.builds(
    lambda td, segs: parse_spiffe_id(f"spiffe://{td}/" + "/".join(segs)),
    st.sampled_from(TRUST_DOMAINS),
    st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=2),
)
headers = st.dictionaries(st.sampled_from(HEADER_KEYS), st.sampled_from(UNIVERSE_VALUES[1:]), max_size=2)


def _peer_leaf() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.just(AnyPeer()),
        peer_ids.map(ExactID),
        st.sampled_from(TRUST_DOMAINS).map(TrustDomain),
        st.builds(lambda td, seg: PathPrefix(td, (seg,)), st.sampled_from(TRUST_DOMAINS), st.sampled_from(SEGMENTS)),
        st.sampled_from(_ID_PATTERNS).map(lambda p: IdPattern(parse_pattern(p))),
    )


peer_matchers = st.recursive(
    _peer_leaf(),
    lambda inner: st.one_of(
        inner.map(Not),
        st.lists(inner, min_size=2, max_size=3).map(lambda ms: AnyOf(tuple(ms))),
        st.lists(inner, min_size=2, max_size=3).map(lambda ms: AllOf(tuple(ms))),
    ),
    max_leaves=4,
)
_method_leaf = st.one_of(
    st.just(AnyMethod()),
    st.sampled_from(("a.S", "b.S", "grpc.health.v1.Health")).map(ServiceScope),
    st.sampled_from(("/a.S/M", "/b.S/M", HEALTH_CHECK)).map(MethodPath),
    st.sampled_from(_PATH_PATTERNS).map(lambda p: PathPattern(parse_pattern(p))),
)
method_scopes = st.one_of(_method_leaf, st.lists(_method_leaf, min_size=2, max_size=3).map(
    lambda ms: AnyOfMethods(tuple(ms))
))
header_conditions = st.builds(
    lambda key, values: HeaderCondition(key, tuple(parse_pattern(v) for v in values)),
    st.sampled_from(HEADER_KEYS),
    st.lists(st.sampled_from(_VALUE_PATTERNS), min_size=1, max_size=2),
)


@st.composite
def rules(
    draw: st.DrawFn, peers: st.SearchStrategy[Any] = peer_matchers, methods: st.SearchStrategy[Any] = method_scopes
) -> Rule:
    """A deny or allow rule; about half of them have header conditions."""
    return Rule(
        f"r{draw(st.integers(0, 10**6))}",
        draw(st.sampled_from(list(Effect))),
        draw(peers),
        draw(methods),
        tuple(draw(st.lists(header_conditions, min_size=1, max_size=2))) if draw(st.booleans()) else (),
    )


@st.composite
def policies(
    draw: st.DrawFn, peers: st.SearchStrategy[Any] = peer_matchers, methods: st.SearchStrategy[Any] = method_scopes,
    max_rules: int = 6,
) -> Policy:
    return Policy(tuple(draw(st.lists(rules(peers, methods), min_size=1, max_size=max_rules))), name="random")


#: every combination of the header keys, each absent or one of the values
HEADER_SETS = tuple(
    {k: v for k, v in zip(HEADER_KEYS, values, strict=True) if v is not None}
    for values in itertools.product(UNIVERSE_VALUES, repeat=len(HEADER_KEYS))
)
