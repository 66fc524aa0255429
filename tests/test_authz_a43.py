"""gRPC A43 policy files: gRPC's semantics, and clear errors with file, line and column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshnode.authz import AuditCondition, Policy, Request, load_a43_file, parse_a43
from meshnode.errors import PolicyError
from meshnode.spiffeid import parse_spiffe_id

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "policy.json"


def decide(policy: Policy, peer: str, method: str, headers: dict[str, str] | None = None) -> tuple[bool, str | None]:
    d = policy.decide(Request.from_metadata(parse_spiffe_id(peer), method, list((headers or {}).items())))
    return d.allowed, d.rule


def policy_of(**doc: Any) -> Policy:
    return parse_a43(json.dumps({"name": "t", **doc}))


def rule(name: str = "r", **fields: Any) -> dict[str, Any]:
    return {"name": name, **fields}


def test_the_readme_example() -> None:
    policy = load_a43_file(EXAMPLE)
    assert policy.name == "meshnode-demo" and policy.audit is AuditCondition.ON_DENY
    alpha, gamma = "spiffe://example.org/node/alpha", "spiffe://example.org/node/gamma"
    assert decide(policy, alpha, "/meshnode.demo.v1.Echo/Say") == (True, "alpha-calls-echo")
    assert decide(policy, alpha, "/meshnode.demo.v1.Echo/SayStream") == (True, "alpha-calls-echo")
    assert decide(policy, gamma, "/meshnode.demo.v1.Echo/Say") == (False, None)
    assert decide(policy, gamma, "/grpc.health.v1.Health/Check") == (True, "example-org-checks-health")
    assert decide(policy, "spiffe://example.org/x", "/grpc.health.v1.Health/Watch")[0]
    assert decide(policy, "spiffe://other.org/x", "/grpc.health.v1.Health/Check") == (False, None)
    assert decide(policy, gamma, "/meshnode.demo.v1.Relay/Forward") == (False, "gamma-may-not-relay")
    assert decide(policy, "spiffe://example.org/node/beta", "/meshnode.demo.v1.Relay/Forward")[0]


@pytest.mark.parametrize(
    ("principals", "peer", "matches"),
    [
        (["spiffe://example.org/a"], "spiffe://example.org/a", True),
        (["spiffe://example.org/a"], "spiffe://example.org/a/b", False),
        (["*"], "spiffe://anything.example/x", True),
        (["spiffe://example.org/ns/*"], "spiffe://example.org/ns/a/b", True),
        (["spiffe://example.org/ns/*"], "spiffe://example.org/nsx", False),
        (["spiffe://example.org/ns*"], "spiffe://example.org/nsx", True),  # gRPC: a string prefix
        (["*/admin"], "spiffe://example.org/team/admin", True),
        (["*/admin"], "spiffe://example.org/team/admins", False),
        (["spiffe://*"], "spiffe://other.org/x", True),
        (["spiffe://example.org/b", "spiffe://example.org/a"], "spiffe://example.org/a", True),
    ],
)
def test_principals_match_the_spiffe_id_like_grpc(principals: list[str], peer: str, matches: bool) -> None:
    policy = policy_of(allow_rules=[rule(source={"principals": principals})])
    assert decide(policy, peer, "/p.S/M")[0] is matches


@pytest.mark.parametrize(
    ("paths", "method", "matches"),
    [
        (["/p.S/M"], "/p.S/M", True),
        (["/p.S/M"], "/p.S/MM", False),
        (["/p.S/*"], "/p.S/Anything", True),
        (["/p.S/*"], "/p.SS/M", False),
        (["*/secret"], "/any.Svc/secret", True),
        (["*"], "/x.Y/Z", True),
        (["/a.B/C", "/p.S/*"], "/p.S/M", True),
    ],
)
def test_paths_match_like_grpc(paths: list[str], method: str, matches: bool) -> None:
    policy = policy_of(allow_rules=[rule(request={"paths": paths})])
    assert decide(policy, "spiffe://example.org/a", method)[0] is matches


def test_missing_source_or_request_matches_everything_and_empty_rule_too() -> None:
    policy = policy_of(
        allow_rules=[rule("everyone-reads", request={"paths": ["/p.S/Read"]}), rule("admin", source={})],
        deny_rules=[rule("nobody-deletes", request={"paths": ["*/Delete"]})],
    )
    assert decide(policy, "spiffe://x.org/a", "/p.S/Read") == (True, "everyone-reads")
    assert decide(policy, "spiffe://x.org/a", "/p.S/Write") == (True, "admin")
    assert decide(policy, "spiffe://x.org/a", "/p.S/Delete") == (False, "nobody-deletes")


def test_headers_are_anded_their_values_ored_and_repeats_joined() -> None:
    policy = policy_of(
        allow_rules=[
            rule(
                request={
                    "headers": [
                        {"key": "X-Env", "values": ["prod", "staging*"]},
                        {"key": "x-team", "values": ["*"]},
                    ]
                }
            )
        ]
    )
    peer, m = "spiffe://example.org/a", "/p.S/M"
    assert policy.needs_headers
    assert decide(policy, peer, m, {"x-env": "prod", "x-team": "core"})[0]
    assert decide(policy, peer, m, {"x-env": "staging-2", "x-team": "core"})[0]
    assert not decide(policy, peer, m, {"x-env": "prod"})[0]
    assert not decide(policy, peer, m, {"x-env": "dev", "x-team": "core"})[0]
    joined = Request.from_metadata(parse_spiffe_id(peer), m, [("x-env", "prod"), ("x-env", "dev"), ("x-team", "c")])
    assert joined.headers["x-env"] == "prod,dev"
    assert not policy.decide(joined).allowed  # "prod,dev" is neither "prod" nor "staging*"


def test_audit_logging_options() -> None:
    options = {"audit_condition": "ON_DENY_AND_ALLOW", "audit_loggers": [{"name": "stdout_logger", "config": {}}]}
    assert policy_of(allow_rules=[rule()], audit_logging_options=options).audit is AuditCondition.ALL
    warnings: list[str] = []
    optional = {"audit_loggers": [{"name": "cloud", "is_optional": True}]}
    parse_a43(json.dumps({"name": "t", "allow_rules": [rule()], "audit_logging_options": optional}), "p", warnings)
    assert any("optional audit logger 'cloud' is not available" in w for w in warnings)


def test_lint_warnings_for_string_prefixes() -> None:
    warnings: list[str] = []
    doc = {"name": "t", "allow_rules": [rule(source={"principals": ["spiffe://example.org*", "spiffe://td/ns/prod*"]})]}
    parse_a43(json.dumps(doc), "p.json", warnings)
    assert "also matches other trust domains" in warnings[0] and "spiffe://example.org/*" in warnings[0]
    assert "write 'spiffe://td/ns/prod/*'" in warnings[1]


BAD: list[tuple[str, str, str]] = [
    # (file text, expected location, expected message part)
    ('{"name": "t",\n  "allow_rules": [\n', "3:1", "not valid JSON"),
    ('{"name": "t", "allow_rules": [{"name": "a",}]}', "1:44", "not valid JSON"),
    ('{"name": "t", "allow_rules": [{"name": "a"}],\n "deny_rule": []}', "2:2: deny_rule", "unknown field 'deny_rule'"),
    (
        '{"name": "t",\n "allow_rules": [{"name": "a",\n   "source": {"principal": ["spiffe://a/b"]}}]}',
        "3:15: allow_rules[0].source.principal",
        "did you mean 'principals'?",
    ),
    ('{"name": "t", "allow_rules": [{"name": "a", "name": "b"}]}', "allow_rules[0].name", "appears twice"),
    ('{"name": "t", "allow_rules": []}', "1:15: allow_rules", "at least one allow rule"),
    ('{"name": "t", "deny_rules": [{"name": "d"}]}', "1:1: (top level)", "'allow_rules' is required"),
    ('{"allow_rules": [{"name": "a"}]}', "(top level)", "'name' is required"),
    ('{"name": "", "allow_rules": [{"name": "a"}]}', "name", "must not be empty"),
    ('{"name": "t", "allow_rules": [{"source": {}}]}', "allow_rules[0]", "'name' is required"),
    ('{"name": "t", "allow_rules": [{"name": "a"}, {"name": "a"}]}', "allow_rules[1].name", "already used"),
    ('{"name": "t", "allow_rules": {"name": "a"}}', "allow_rules", "must be a JSON array"),
    ('[1, 2]', "(top level)", "must be a JSON object"),
]


def principal_doc(principal: Any) -> str:
    return json.dumps({"name": "t", "allow_rules": [{"name": "a", "source": {"principals": [principal]}}]})


BAD_PRINCIPALS = [
    ("spiffe://Example.org/a", "lowercase"),
    ("spiffe://example.org:443/a", "only a-z"),
    ("spiffe://u@example.org/a", "only a-z"),
    ("spiffe://example.org//a", "empty segments"),
    ("spiffe://example.org/a/../b", "'.' and '..'"),
    ("spiffe://example.org/a%20b", "percent-encoding"),
    ("spiffe://example.org/a?q", "invalid character"),
    ("spiffe://example.org/a#f", "invalid character"),
    ("spiffe://example.org/a/", "trailing '/'"),
    ("spiffe://example.org/" + "a" * 2100, "longer than 2048"),
    ("spiffe://example.org/a*b", "not a single leading or trailing wildcard"),
    ("*example*", "not a single leading or trailing wildcard"),
    ("**", "not a single leading or trailing wildcard"),
    ("spiffe://Example.org/*", "only a-z"),
    ("spiffe://example.org/a/../*", "'.' and '..'"),
    ("spiffe://example.org/a b*", "path segment may hold only"),
    ("spiffe://EXAMPLE*", "trust domain part may hold only"),
    ("node.example.org", "is not a SPIFFE ID"),
    ("dns*", "can never match"),
    ("", "empty principal"),
    (7, "must be a string"),
]


@pytest.mark.parametrize(("text", "where", "problem"), BAD)
def test_invalid_files_say_where_and_why(text: str, where: str, problem: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_a43(text, "policy.json")
    message = str(err.value)
    assert message.startswith("authz: policy.json:"), message
    assert where in message and problem in message, message


@pytest.mark.parametrize(("principal", "problem"), BAD_PRINCIPALS)
def test_invalid_principals_are_refused(principal: Any, problem: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_a43(principal_doc(principal), "p.json")
    message = str(err.value)
    assert "p.json:1:" in message and "allow_rules[0].source.principals[0]" in message, message
    assert problem in message, message


@pytest.mark.parametrize(
    ("request_", "where", "problem"),
    [
        ({"paths": ["p.S/M"]}, "paths[0]", "must start with '/'"),
        ({"paths": ["p.S/*"]}, "paths[0]", "must start with '/'"),
        ({"paths": ["/p.S/*/x"]}, "paths[0]", "not a single leading or trailing wildcard"),
        ({"paths": []}, "paths", "empty list"),
        ({"headers": [{"key": ":authority", "values": ["x"]}]}, "headers[0].key", "pseudo-headers"),
        ({"headers": [{"key": ":path", "values": ["x"]}]}, "headers[0].key", "pseudo-headers"),
        ({"headers": [{"key": "grpc-timeout", "values": ["1S"]}]}, "headers[0].key", "reserved by gRPC"),
        ({"headers": [{"key": "Host", "values": ["x"]}]}, "headers[0].key", "hop-by-hop"),
        ({"headers": [{"key": "connection", "values": ["x"]}]}, "headers[0].key", "hop-by-hop"),
        ({"headers": [{"key": "te", "values": ["x"]}]}, "headers[0].key", "hop-by-hop"),
        ({"headers": [{"key": "x-trace-bin", "values": ["x"]}]}, "headers[0].key", "binary"),
        ({"headers": [{"key": "x-a", "values": []}]}, "headers[0].values", "empty list"),
        ({"headers": [{"key": "x-a"}]}, "headers[0]", "'values' is required"),
        ({"headers": [{"key": "x-a", "values": ["x"], "value": "y"}]}, "headers[0].value", "unknown field"),
        ({"method": "GET"}, "method", "unknown field 'method'"),
    ],
)
def test_invalid_requests_are_refused(request_: dict[str, Any], where: str, problem: str) -> None:
    doc = json.dumps({"name": "t", "allow_rules": [{"name": "a", "request": request_}]}, indent=1)
    with pytest.raises(PolicyError) as err:
        parse_a43(doc, "p.json")
    assert f"allow_rules[0].request.{where}" in str(err.value) and problem in str(err.value), str(err.value)


def test_empty_principals_list_is_refused() -> None:
    doc = json.dumps({"name": "t", "allow_rules": [{"name": "a", "source": {"principals": []}}]})
    with pytest.raises(PolicyError, match="empty list; omit 'principals'"):
        parse_a43(doc)


def test_unknown_audit_logger_and_condition() -> None:
    bad_logger = {"audit_loggers": [{"name": "cloud"}]}
    with pytest.raises(PolicyError, match="unknown audit logger 'cloud'"):
        policy_of(allow_rules=[rule()], audit_logging_options=bad_logger)
    with pytest.raises(PolicyError, match="must be one of NONE, ON_DENY, ON_ALLOW, ON_DENY_AND_ALLOW"):
        policy_of(allow_rules=[rule()], audit_logging_options={"audit_condition": "on_deny"})


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        load_a43_file(tmp_path / "missing.json")
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"name": "caf\xe9"}')
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_a43_file(latin)
