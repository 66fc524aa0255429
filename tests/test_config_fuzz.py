"""Fuzzing the config readers: whatever node.toml, agent.toml or a policy file holds, reading it ends
in a value or in one ConfigError line naming the file (exit 2), never in another exception.

Bounded (modest max_examples, no deadline) so the suite stays fast; the CLI is driven through a few
real ``meshnode`` processes in test_cli_fuzz.py.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from meshnode.authz.a43 import parse_a43
from meshnode.authz.config import load_policy_file
from meshnode.config.node import LIMITS, NodeConfig, load_node_config
from meshnode.devagent.config import AgentConfig, load_agent_config
from meshnode.errors import EXIT_CONFIG, ConfigError, MeshnodeError, PolicyError
from meshnode.preflight import dev_spiffe_id, static_checks
from meshnode.spiffeid import parse_spiffe_id
from tests.support.toml_text import NUMBERS, STRINGS, VALUES, document, table

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

NODE_KEYS = ["name", "listen", "mode", "services", "shutdown_grace", "peer_verify", "keepalive", "connect_timeout",
             "max_connection_age"]
IDENTITY_KEYS = ["source", "socket", "trust_domain", "timeout", "federates_with", "cert", "key", "bundle",
                 "federated_bundles_dir", "spiffe_id", "state_dir", "svid_ttl"]
AUTHZ_KEYS = ["allow", "policy", "audit", "dry_run"]
PEER_KEYS = ["address", "spiffe_id", "verify", "server_name"]
TELEMETRY_KEYS = ["exporter", "jsonl_path", "otlp_endpoint", "service_name", "metrics_exporter"]
AGENT_KEYS = ["trust_domain", "socket_dir", "svid_ttl", "state_dir", "ca_overlap"]
ENTRY_KEYS = ["name", "spiffe_id", "dns_names", "map_dns", "uid"]

VALID_NODE: dict[str, Any] = {
    "node": {"name": "alpha", "listen": "127.0.0.1:0"},
    "identity": {"source": "dev", "trust_domain": "example.org"},
    "authz": {"allow": ["*"]},
    "peers": {"beta": {"address": "127.0.0.1:7002", "spiffe_id": "spiffe://example.org/node/beta"}},
}
VALID_AGENT: dict[str, Any] = {
    "trust_domain": "example.org",
    "socket_dir": "/tmp/meshnode-fuzz-sockets",
    "entries": [{"name": "alpha", "spiffe_id": "spiffe://example.org/node/alpha"}],
}


def assert_config_error(exc: MeshnodeError, path: Path) -> None:
    """What a user sees: exit 2 and one line naming the file."""
    message = str(exc)
    assert isinstance(exc, ConfigError) and exc.exit_code == EXIT_CONFIG, message
    assert "\n" not in message and "\r" not in message, message
    assert str(path) in message, message
    assert len(message) < 1000, message


def node_documents() -> st.SearchStrategy[str]:
    """A valid node.toml with fuzzed keys mixed in (so later checks are reached too), or a fuzzed one."""

    @st.composite
    def mixed(draw: st.DrawFn) -> str:
        doc = copy.deepcopy(VALID_NODE)
        for name, keys in (("node", NODE_KEYS), ("identity", IDENTITY_KEYS), ("authz", AUTHZ_KEYS),
                           ("telemetry", TELEMETRY_KEYS)):
            doc.setdefault(name, {}).update(draw(table(keys)))
        doc["peers"]["beta"].update(draw(table(PEER_KEYS)))
        if draw(st.booleans()):
            doc["peers"][draw(STRINGS)] = draw(table(PEER_KEYS))
        if draw(st.booleans()):
            doc[draw(st.text(max_size=8))] = draw(VALUES)
        return document(doc)

    return st.one_of(mixed(), st.text(max_size=200))


def check_node_config(text: str, path: Path) -> NodeConfig | None:
    path.write_text(text, encoding="utf-8")
    try:
        config = load_node_config(path, environ={})
    except MeshnodeError as exc:
        assert_config_error(exc, path)
        return None
    # what `meshnode run` and `meshnode check` compute from a config before any network
    for key, (low, high) in LIMITS.items():
        table_name, _, name = key.partition(".")
        value = getattr(config.identity if table_name == "identity" else config, name)
        number = value.total_seconds() if hasattr(value, "total_seconds") else value
        assert math.isfinite(number) and low <= number <= high, (key, value)
    config.host_port  # noqa: B018 - parses listen again
    static_checks(config, service_policies=False)
    parse_spiffe_id(dev_spiffe_id(config))
    for peer in config.peers.values():
        assert peer.tls_name
    return config


@FUZZ
@given(text=node_documents())
@example(text=document({**VALID_NODE, "node": {"name": "a", "listen": "127.0.0.1:²"}}))
@example(text=document({**VALID_NODE, "identity": {"source": "dev", "timeout": float("nan")}}))
@example(text=document({**VALID_NODE, "node": {"name": "a", "listen": "127.0.0.1:0", "shutdown_grace": float("inf")}}))
@example(text=document({**VALID_NODE, "node": {"name": "a", "listen": "127.0.0.1:0", "keepalive": 1e300}}))
@example(text=document({**VALID_NODE, "node": {"name": "a", "listen": "127.0.0.1:0", "max_connection_age": 2**63 - 1}}))
@example(text=document({**VALID_NODE, "identity": {"source": "dev", "svid_ttl": 2**63 - 1}}))
@example(text=document({**VALID_NODE, "node": {"name": "a b", "listen": "127.0.0.1:0"}}))
@example(text=document({**VALID_NODE, "identity": {"source": "files", "cert": "~nosuchuser/c", "key": "k",
                                                    "bundle": "b"}}))
@example(text="x = " + "[" * 100_000 + "]" * 100_000)
@example(text="x = " + "{a = " * 3000 + "1" + "}" * 3000)
@example(text="x = " + "1" * 5000)
def test_node_toml_reads_to_a_config_or_one_line_naming_the_file(text: str, tmp_path: Path) -> None:
    check_node_config(text, tmp_path / "node.toml")


def agent_documents() -> st.SearchStrategy[str]:
    @st.composite
    def mixed(draw: st.DrawFn) -> str:
        doc = copy.deepcopy(VALID_AGENT)
        doc.update(draw(table(AGENT_KEYS)))
        doc["entries"][0].update(draw(table(ENTRY_KEYS)))
        if draw(st.booleans()):
            doc["entries"].append(draw(table(ENTRY_KEYS)))
        if draw(st.booleans()):
            doc["federation"] = draw(st.dictionaries(STRINGS, STRINGS, max_size=2))
        return document(doc)

    return st.one_of(mixed(), st.text(max_size=200))


@FUZZ
@given(text=agent_documents())
@example(text=document({**VALID_AGENT, "ca_overlap": float("nan")}))
@example(text=document({**VALID_AGENT, "svid_ttl": 2**63 - 1}))
@example(text=document({**VALID_AGENT, "entries": [{"name": "a", "spiffe_id": "spiffe://a.org/a", "uid": 2**40}]}))
@example(text=document({**VALID_AGENT, "socket_dir": "~nosuchuser/s"}))
def test_agent_toml_reads_to_a_config_or_one_line_naming_the_file(text: str, tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    try:
        config = load_agent_config(path)
    except MeshnodeError as exc:
        assert_config_error(exc, path)
        return
    assert isinstance(config, AgentConfig)
    assert 2 <= config.svid_ttl <= 31_536_000 and 0 <= config.ca_overlap <= 86_400
    assert all(e.uid is None or 0 <= e.uid < 2**32 - 1 for e in config.entries)


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS.filter(lambda n: not isinstance(n, float) or math.isfinite(n)),
              STRINGS),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(STRINGS, inner, max_size=3)),
    max_leaves=8,
)


@st.composite
def a43_documents(draw: st.DrawFn) -> str:
    """An A43 document whose fields hold fuzzed values, or any JSON, or any text."""
    rule = st.fixed_dictionaries({"name": STRINGS}, optional={
        "source": st.fixed_dictionaries({}, optional={"principals": st.lists(STRINGS, max_size=3) | JSON_VALUES}),
        "request": st.fixed_dictionaries({}, optional={
            "paths": st.lists(STRINGS, max_size=3) | JSON_VALUES,
            "headers": st.lists(st.fixed_dictionaries({"key": STRINGS, "values": st.lists(STRINGS, max_size=2)}),
                                max_size=2) | JSON_VALUES,
        }),
    })
    doc = draw(st.fixed_dictionaries({"name": STRINGS}, optional={
        "allow_rules": st.lists(rule, max_size=3) | JSON_VALUES,
        "deny_rules": st.lists(rule, max_size=2) | JSON_VALUES,
        "audit_logging_options": JSON_VALUES,
    }))
    return draw(st.sampled_from([json.dumps(doc), json.dumps(doc, indent=1), json.dumps(draw(JSON_VALUES))]))


@FUZZ
@given(text=st.one_of(a43_documents(), st.text(max_size=200)))
@example(text="[" * 100_000 + "]" * 100_000)
@example(text='{"name": ' + "1" * 5000 + "}")
@example(text='{"name": "p", "allow_rules": [{"name": "r", "source": {"principals": ["spiffe://\\u0000"]}}]}')
def test_a43_policy_text_parses_to_a_policy_or_one_line_naming_the_file(text: str) -> None:
    try:
        policy = parse_a43(text, "fuzz-policy.json")
    except MeshnodeError as exc:
        assert isinstance(exc, PolicyError) and exc.exit_code == EXIT_CONFIG, exc
        assert "\n" not in str(exc) and "fuzz-policy.json" in str(exc), str(exc)
        return
    assert policy.allow_rules


@FUZZ
@given(authz=table(AUTHZ_KEYS))
def test_policy_toml_files_load_or_fail_in_one_line(authz: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "authz.toml"
    path.write_text(document({"authz": authz}), encoding="utf-8")
    try:
        load_policy_file(path)
    except MeshnodeError as exc:
        assert isinstance(exc, ConfigError) and "\n" not in str(exc), str(exc)
        assert str(path) in str(exc) or str(path.parent) in str(exc), str(exc)


@pytest.mark.parametrize("key", sorted(LIMITS))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e300, 2**63 - 1, -1])
def test_every_number_is_finite_and_within_its_documented_range(key: str, value: float, tmp_path: Path) -> None:
    table_name, _, name = key.partition(".")
    doc = copy.deepcopy(VALID_NODE)
    doc[table_name][name] = int(value) if name == "svid_ttl" and math.isfinite(value) else value
    path = tmp_path / "node.toml"
    path.write_text(document(doc))
    with pytest.raises(ConfigError) as info:
        load_node_config(path, environ={})
    assert_config_error(info.value, path)
    assert f"'{key}'" in str(info.value)
