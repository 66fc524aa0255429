"""The policy model: matchers, rules, decisions, explanations, builders (no network)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import meshnode.authz
from meshnode.authz import (
    AllOf,
    AnyOf,
    AuditCondition,
    Effect,
    ExactID,
    Not,
    PathPrefix,
    Policy,
    Request,
    Rule,
    TrustDomain,
    allow,
    deny,
    merge_policies,
    parse_peer,
    policy_from_allowlist,
    restrict,
)
from meshnode.authz.scopes import AnyMethod, ServiceScope
from meshnode.errors import PolicyError
from meshnode.spiffeid import SpiffeID, parse_spiffe_id


def sid(text: str) -> SpiffeID:
    return parse_spiffe_id(text)


def test_public_names_are_pinned() -> None:
    assert sorted(meshnode.authz.__all__) == sorted(
        [
            "AUDIT_LOGGER", "AcceptedTrust", "ActivePolicy", "AllOf", "AnyOf", "AnyPeer", "AuditCondition",
            "Authorizer", "AuthzInterceptor", "Caller", "Decision", "Effect", "ExactID",
            "Explanation", "IdPattern", "JwtAuthn", "NoPeerIdentityError", "Not", "PathPrefix", "PeerMatcher", "Policy",
            "PolicyFile", "PolicySource", "Request", "Rule", "StaticPolicy", "TrustDomain", "TrustInfo",
            "TrustSnapshot", "Verdict", "allow", "deny", "load_a43_file", "load_policy_file", "merge_policies",
            "parse_a43", "parse_peer", "peer_id", "peer_jwt", "peer_mtls_id", "policy_from_allowlist", "policy_source",
            "restrict",
        ]
    )
    for name in meshnode.authz.__all__:
        assert getattr(meshnode.authz, name) is not None


@pytest.mark.parametrize(
    ("entry", "peer", "matches"),
    [
        ("spiffe://example.org/ns/prod/api", "spiffe://example.org/ns/prod/api", True),
        ("spiffe://example.org/ns/prod/api", "spiffe://example.org/ns/prod/api2", False),
        ("spiffe://example.org/ns/prod/api", "spiffe://example.org/ns/prod/api/x", False),
        ("spiffe://example.org/ns/prod/api", "spiffe://other.org/ns/prod/api", False),
        ("spiffe://example.org", "spiffe://example.org/anything/at/all", True),
        ("spiffe://example.org", "spiffe://example.org", True),
        ("spiffe://example.org", "spiffe://example.org.evil/x", False),
        ("spiffe://example.org", "spiffe://sub.example.org/x", False),
        ("spiffe://example.org/ns/prod/*", "spiffe://example.org/ns/prod/a", True),
        ("spiffe://example.org/ns/prod/*", "spiffe://example.org/ns/prod/a/b", True),
        ("spiffe://example.org/ns/prod/*", "spiffe://example.org/ns/prod", False),
        ("spiffe://example.org/ns/prod/*", "spiffe://example.org/ns/production", False),
        ("spiffe://example.org/ns/prod/*", "spiffe://example.org/ns/production/a", False),
        ("spiffe://example.org/ns/prod/*", "spiffe://other.org/ns/prod/a", False),
        ("spiffe://example.org/*", "spiffe://example.org/a", True),
        ("spiffe://example.org/*", "spiffe://example.org", False),
        ("*", "spiffe://anything.example/x", True),
    ],
)
def test_allowlist_entries_match(entry: str, peer: str, matches: bool) -> None:
    assert parse_peer(entry).matches(sid(peer)) is matches


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("http://example.org/a", "must start with 'spiffe://'"),
        ("SPIFFE://example.org/a", "must start with 'spiffe://'"),
        ("spiffe://Example.org/a", "lowercase"),
        ("spiffe://example.org:8443/a", "only a-z"),
        ("spiffe://user@example.org/a", "only a-z"),
        ("spiffe://example.org//a", "empty"),
        ("spiffe://example.org/a/./b", "'.' and '..' are not allowed"),
        ("spiffe://example.org/a/../b", "'.' and '..' are not allowed"),
        ("spiffe://example.org/a%2Fb", "percent-encoding"),
        ("spiffe://example.org/a?x=1", "invalid character"),
        ("spiffe://example.org/a#frag", "invalid character"),
        ("spiffe://example.org/a/", "trailing '/'"),
        ("spiffe://example.org/" + "a" * 2100, "longer than 2048 bytes"),
        ("spiffe://example.org/ns*", "whole last path segment"),
        ("spiffe://example.org/*/prod", "whole last path segment"),
        ("spiffe://*.example.org", "whole last path segment"),
        ("spiffe://example.org/ns/*/", "whole last path segment"),
        ("", "must start with 'spiffe://'"),
    ],
)
def test_invalid_allowlist_entries_are_refused_with_the_reason(entry: str, problem: str) -> None:
    with pytest.raises(PolicyError) as err:
        policy_from_allowlist(["spiffe://example.org/ok", entry])
    message = str(err.value)
    assert message.startswith("authz: [authz] allow[1]: ")
    assert problem in message


def test_an_allowlist_must_be_a_list() -> None:
    with pytest.raises(PolicyError, match="must be a list of SPIFFE IDs"):
        policy_from_allowlist("spiffe://example.org/a")


segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=6).filter(
    lambda s: s not in (".", "..")
)
segments = st.lists(segment, min_size=0, max_size=4)


@given(prefix=segments, child=segment, rest=segments, tail=segment)
@settings(max_examples=300, deadline=None)
def test_prefix_rules_never_match_across_a_segment_boundary(
    prefix: list[str], child: str, rest: list[str], tail: str
) -> None:
    rule = parse_peer("spiffe://example.org" + "".join("/" + s for s in prefix) + "/*")
    assert rule == PathPrefix("example.org", tuple(prefix))
    base = "spiffe://example.org" + "".join("/" + s for s in prefix)
    below = "".join("/" + s for s in (child, *rest))
    assert rule.matches(sid(base + below))  # anything strictly below matches
    assert not rule.matches(sid(base))  # "/*" needs one more segment
    if prefix:  # the last segment extended in place (/ns/prod -> /ns/prodX) never matches
        assert not rule.matches(sid(base + tail + below))
        assert not rule.matches(sid(base + tail))
        sibling = "spiffe://example.org" + "".join("/" + s for s in prefix[:-1]) + "/" + tail
        assert rule.matches(sid(sibling + below)) is (tail == prefix[-1])
    assert not rule.matches(sid("spiffe://other.org" + "".join("/" + s for s in prefix) + below))


peer_ids = st.sampled_from(
    [
        "spiffe://example.org/node/alpha",
        "spiffe://example.org/node/beta",
        "spiffe://example.org/ns/prod/api",
        "spiffe://other.org/x",
    ]
)
peer_specs = st.sampled_from(
    [
        "spiffe://example.org/node/alpha",
        "spiffe://example.org",
        "spiffe://example.org/node/*",
        "spiffe://other.org",
        "*",
    ]
)
scopes = st.sampled_from(
    [{}, {"service": "pkg.Svc"}, {"method": "/pkg.Svc/A"}, {"method": "/pkg.Svc/B"}, {"service": "other.Svc"}]
)
methods = st.sampled_from(["/pkg.Svc/A", "/pkg.Svc/B", "/other.Svc/A"])


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    effect = draw(st.sampled_from([allow, deny, restrict]))
    return effect(draw(peer_specs), name=f"r{draw(st.integers(0, 10**6))}", **draw(scopes))


@given(rule_list=st.lists(rules(), max_size=8), peer=peer_ids, method=methods)
@settings(max_examples=500, deadline=None)
def test_deny_always_beats_allow_and_nothing_matched_denies(rule_list: list[Rule], peer: str, method: str) -> None:
    policy = Policy(tuple(rule_list))
    request = Request(sid(peer), method)
    decision = policy.decide(request)
    denying = [r for r in rule_list if r.effect is Effect.DENY and r.matches(request)]
    allowing = [r for r in rule_list if r.effect is Effect.ALLOW and r.matches(request)]
    if denying:
        assert not decision.allowed and decision.rule in {r.name for r in denying}
    elif allowing:
        assert decision.allowed and decision.rule in {r.name for r in allowing}
    else:
        assert not decision.allowed and decision.rule is None
    # the order of the rules never changes the outcome
    assert Policy(tuple(reversed(rule_list))).decide(request).allowed is decision.allowed


def test_scopes_service_and_method() -> None:
    policy = Policy(
        (
            allow("spiffe://example.org/a", service="pkg.Svc", name="a-svc"),
            allow("spiffe://example.org/b", method="/pkg.Svc/Read", name="b-read"),
        )
    )
    a, b = sid("spiffe://example.org/a"), sid("spiffe://example.org/b")
    assert policy.decide(Request(a, "/pkg.Svc/Write")).allowed
    assert not policy.decide(Request(a, "/pkg.SvcX/Write")).allowed  # service on its own boundary
    assert not policy.decide(Request(a, "/other.Svc/Write")).allowed
    assert policy.decide(Request(b, "/pkg.Svc/Read")).rule == "b-read"
    assert not policy.decide(Request(b, "/pkg.Svc/ReadAll")).allowed


def test_restrict_limits_a_method_to_named_peers_whatever_else_allows() -> None:
    policy = merge_policies(
        policy_from_allowlist(["spiffe://example.org"]),
        Policy((restrict("spiffe://example.org/node/alpha", method="/pkg.Admin/Reset", name="only-alpha"),)),
    )
    alpha, beta = sid("spiffe://example.org/node/alpha"), sid("spiffe://example.org/node/beta")
    assert policy.decide(Request(alpha, "/pkg.Admin/Reset")).allowed
    denied = policy.decide(Request(beta, "/pkg.Admin/Reset"))
    assert (denied.allowed, denied.rule) == (False, "only-alpha")
    assert policy.decide(Request(beta, "/pkg.Admin/Status")).allowed


def test_composite_matchers_explain_themselves() -> None:
    excluded = AnyOf((ExactID(sid("spiffe://example.org/x")), PathPrefix("example.org", ("tmp",))))
    m = AllOf((TrustDomain("example.org"), Not(excluded)))
    assert m.matches(sid("spiffe://example.org/y"))
    assert not m.matches(sid("spiffe://example.org/x"))
    assert not m.matches(sid("spiffe://example.org/tmp/1"))
    assert m.describe() == (
        "all of [any ID in trust domain example.org (spiffe://example.org), "
        "not any of [spiffe://example.org/x, spiffe://example.org/tmp/*]]"
    )


def test_explain_names_each_rule_and_why() -> None:
    policy = Policy(
        (
            deny("spiffe://example.org/node/gamma", name="no-gamma"),
            allow("spiffe://example.org/node/*", service="pkg.Svc", name="nodes"),
        ),
        name="p",
    )
    text = policy.explain(Request(sid("spiffe://example.org/node/beta"), "/pkg.Svc/M")).render()
    assert text.splitlines()[:3] == ["decision: ALLOW", "rule: nodes", "reason: allow rule 'nodes' matched"]
    assert "[deny] no-gamma: no match" in text
    assert "peer spiffe://example.org/node/beta does not match spiffe://example.org/node/gamma" in text
    assert "method /pkg.Svc/M matches service pkg.Svc" in text
    denied = policy.explain(Request(sid("spiffe://other.org/x"), "/pkg.Svc/M")).render()
    assert denied.splitlines()[:2] == ["decision: DENY", "rule: (none: default deny)"]


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"method": "pkg.Svc/M"}, "must start with '/': write '/pkg.Svc/M'"),
        ({"method": "/pkg.Svc"}, "is not a method path"),
        ({"method": "/pkg.Svc/M/extra"}, "is not a method path"),
        ({"service": "/pkg.Svc"}, "without slashes"),
        ({"service": "pkg.Svc", "method": "/pkg.Svc/M"}, "either service= or method="),
    ],
)
def test_bad_scopes_are_refused(kwargs: dict[str, str], problem: str) -> None:
    with pytest.raises(PolicyError, match="authz: ") as err:
        allow("spiffe://example.org/a", **kwargs)
    assert problem in str(err.value)


def test_a_rule_needs_a_name_and_peers() -> None:
    with pytest.raises(PolicyError, match="non-empty name"):
        Rule(" ", Effect.ALLOW)
    with pytest.raises(PolicyError, match="list of peers is empty"):
        allow([])


def test_production_check_refuses_policies_that_deny_everything() -> None:
    with pytest.raises(PolicyError, match=r"allows no caller.*misconfiguration"):
        policy_from_allowlist([]).check_production()
    catch_all = Policy((allow("spiffe://example.org", name="org"), Rule("everyone-out", Effect.DENY)))
    with pytest.raises(PolicyError, match="deny rule 'everyone-out' matches every caller and every method"):
        catch_all.check_production()
    policy_from_allowlist(["spiffe://example.org/a"]).check_production()
    Policy((allow("*"), deny("spiffe://example.org/bad"))).check_production()


def test_merge_keeps_every_rule_and_the_widest_audit() -> None:
    one = Policy((allow("spiffe://example.org/a", name="a"),), name="one", audit=AuditCondition.ON_DENY)
    two = Policy(
        (deny("spiffe://example.org/a", method="/p.S/M", name="d"),), name="two", audit=AuditCondition.ON_ALLOW
    )
    merged = merge_policies(one, two)
    assert merged.name == "one+two" and [r.name for r in merged.rules] == ["a", "d"]
    assert merged.audit is AuditCondition.ALL
    assert not merged.decide(Request(sid("spiffe://example.org/a"), "/p.S/M")).allowed
    assert merged.allow_rules[0].methods == AnyMethod() and two.rules[0].effect is Effect.DENY
    assert allow("spiffe://example.org/a", service="p.S").methods == ServiceScope("p.S")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("none", "none"), ("on_deny", "on_deny"), ("ON_DENY_AND_ALLOW", "all"), ("ON_ALLOW", "on_allow")],
)
def test_audit_conditions_parse(value: str, expected: str) -> None:
    assert AuditCondition.parse(value).value == expected


def test_unknown_audit_condition_is_refused() -> None:
    with pytest.raises(PolicyError, match="not an audit condition; use one of none, on_deny, on_allow, all"):
        AuditCondition.parse("sometimes")
