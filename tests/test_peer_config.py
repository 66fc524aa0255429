"""[peers.NAME] as a service: the address forms, addresses, lb, retries, retry_on, timeout.

What a user writes in node.toml, what meshnode makes of it (endpoint kind,
default balancing, gRPC's service config for dns mode), and the message a
wrong value gets: the file's key, what is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshnode.config.node import PeerConfig, load_node_config
from meshnode.config.targets import HostPort, endpoint_spec
from meshnode.errors import ConfigError
from meshnode.peer_plans import grpc_target, list_target, service_config
from meshnode.spiffeid import parse_spiffe_id

BETA = "spiffe://example.org/node/beta"


def load(tmp_path: Path, peer: str) -> PeerConfig:
    path = tmp_path / "node.toml"
    path.write_text(f'[node]\nname = "alpha"\n[peers.beta]\nspiffe_id = "{BETA}"\n{peer}\n')
    return load_node_config(path, environ={}).peers["beta"]


def refused(tmp_path: Path, peer: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, peer)
    message = str(info.value)
    assert str(tmp_path / "node.toml") in message and "\n" not in message, message
    return message


@pytest.mark.parametrize(
    "line, kind, hosts, lb",
    [
        ('address = "10.0.0.1:7001"', "single", ["10.0.0.1:7001"], "pick_first"),
        ('address = "api.prod:7001"', "single", ["api.prod:7001"], "pick_first"),
        ('address = "[::1]:7001"', "single", ["[::1]:7001"], "pick_first"),
        ('address = "dns:///api.prod.svc.cluster.local:7001"', "dns", ["api.prod.svc.cluster.local:7001"],
         "round_robin"),
        ('address = "dns://10.96.0.10:53/api.prod:7001"', "dns", ["api.prod:7001"], "round_robin"),
        ('address = "dns://10.96.0.10/api.prod:7001"', "dns", ["api.prod:7001"], "round_robin"),
        ('address = "ipv4:10.0.0.1:7001,10.0.0.2:7002"', "static", ["10.0.0.1:7001", "10.0.0.2:7002"],
         "round_robin"),
        ('address = "ipv4:10.0.0.1:7001"', "static", ["10.0.0.1:7001"], "pick_first"),
        ('address = "ipv6:[::1]:7001,[fe80::1]:7001"', "static", ["[::1]:7001", "[fe80::1]:7001"], "round_robin"),
        ('addresses = ["10.0.0.1:7001", "api-1.prod:7001"]', "static", ["10.0.0.1:7001", "api-1.prod:7001"],
         "round_robin"),
        ('addresses = ["api-0.prod:7001"]', "static", ["api-0.prod:7001"], "round_robin"),
        ('addresses = ["10.0.0.1:7001"]', "static", ["10.0.0.1:7001"], "pick_first"),
    ],
)
def test_every_address_form_names_its_endpoints(tmp_path: Path, line: str, kind: str, hosts: list[str],
                                                lb: str) -> None:
    """Balancing defaults to round robin exactly when the peer can have more than one endpoint."""
    peer = load(tmp_path, line)
    assert peer.endpoints.kind == kind
    assert [str(h) for h in peer.endpoints.hosts] == hosts
    assert peer.lb == lb
    assert (peer.retries, peer.retry_on, peer.timeout) == (2, ("UNAVAILABLE",), None)


def test_the_dns_server_of_an_authority_is_kept(tmp_path: Path) -> None:
    assert load(tmp_path, 'address = "dns://10.96.0.10:5353/api:7001"').endpoints.authority == HostPort(
        "10.96.0.10", 5353)
    assert load(tmp_path, 'address = "dns://[fd00::a]/api:7001"').endpoints.authority == HostPort("fd00::a", 53)
    assert load(tmp_path, 'address = "dns:///api:7001"').endpoints.authority is None


def test_balancing_retries_and_timeout_are_read(tmp_path: Path) -> None:
    peer = load(tmp_path, 'address = "dns:///api:7001"\nlb = "pick_first"\nretries = 4\n'
                'retry_on = ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]\ntimeout = 2.5')
    assert (peer.lb, peer.retries, peer.retry_on, peer.timeout) == (
        "pick_first", 4, ("UNAVAILABLE", "RESOURCE_EXHAUSTED"), 2.5)
    assert load(tmp_path, 'address = "10.0.0.1:7001"\nlb = "round_robin"\nretries = 0').lb == "round_robin"


@pytest.mark.parametrize(
    "lines, wanted",
    [
        ('address = "10.0.0.1:1"\naddresses = ["10.0.0.2:1"]', "'peers.beta.addresses' and 'address' are both set"),
        ("", "'peers.beta.address' is required (host:port, dns:///host:port, ipv4:..., or use addresses)"),
        ('addresses = []', "'peers.beta.addresses' is empty"),
        ('addresses = ["dns:///x:1"]', "item 0 'dns:///x:1' must be host:port"),
        ('addresses = ["10.0.0.1"]', "item 0 '10.0.0.1' is not host:port"),
        ('address = "xds:///beta"', "the target scheme 'xds' is not supported"),
        ('address = "unix:/run/beta.sock"', "the target scheme 'unix' is not supported"),
        ('address = "dns:api:7001"', "write dns:///host:port"),
        ('address = "dns://dns.example/api:7001"', "the DNS server 'dns.example' must be an IP address"),
        ('address = "dns:///api"', "'api' is not host:port"),
        ('address = "ipv4:10.0.0.1:7001,[::1]:7001"', "is not an IPv4 address with a port"),
        ('address = "ipv6:10.0.0.1:7001"', "is not an IPv6 address with a port"),
        ('address = "10.0.0.1:0"', "port 0 is out of range"),
        ('address = "10.0.0.1:1"\nlb = "random"', "'peers.beta.lb' must be one of round_robin, pick_first"),
        ('address = "10.0.0.1:1"\nretries = 5', "'peers.beta.retries' must be at most 4"),
        ('address = "10.0.0.1:1"\nretries = -1', "'peers.beta.retries' must be at least 0"),
        ('address = "10.0.0.1:1"\nretry_on = ["NOT_FOUND"]', "item 0 'NOT_FOUND' is not one of UNAVAILABLE"),
        ('address = "10.0.0.1:1"\nretry_on = []', "must list at least one status code"),
        ('address = "10.0.0.1:1"\ntimeout = 0', "'peers.beta.timeout' must be at least 0.001"),
        ('address = "10.0.0.1:1"\ntimeout = nan', "'peers.beta.timeout' must be a finite number"),
        ('address = "10.0.0.1:1"\nbalance = "round_robin"', "'peers.beta.balance' is not a known key"),
    ],
)
def test_wrong_values_are_refused_naming_the_key(tmp_path: Path, lines: str, wanted: str) -> None:
    assert wanted in refused(tmp_path, lines)


def test_too_many_endpoints_are_refused(tmp_path: Path) -> None:
    listed = ", ".join(f'"10.0.{i // 250}.{i % 250 + 1}:7001"' for i in range(257))
    assert "at most 256" in refused(tmp_path, f"addresses = [{listed}]")


def test_configs_built_in_code_get_the_same_checks() -> None:
    sid = parse_spiffe_id(BETA)
    with pytest.raises(ConfigError, match=r"\[peers.b\] addresses and address are both set"):
        PeerConfig("b", "10.0.0.1:1", sid, addresses=("10.0.0.2:1",))
    with pytest.raises(ConfigError, match=r"\[peers.b\] retries must be a whole number from 0 to 4"):
        PeerConfig("b", "10.0.0.1:1", sid, retries=9)
    with pytest.raises(ConfigError, match=r"\[peers.b\] timeout must be a number of seconds"):
        PeerConfig("b", "10.0.0.1:1", sid, timeout=float("inf"))
    peer = PeerConfig("b", "", sid, addresses=("10.0.0.1:1", "10.0.0.2:1"))
    assert peer.lb == "round_robin" and peer.where == "10.0.0.1:1, 10.0.0.2:1"


def test_dns_mode_service_config_balances_and_retries() -> None:
    sid = parse_spiffe_id(BETA)
    spread = json.loads(service_config(PeerConfig("b", "dns:///api:7001", sid, verify="dns")))
    assert spread["loadBalancingConfig"] == [{"round_robin": {}}]
    assert spread["healthCheckConfig"] == {"serviceName": ""}
    [method] = spread["methodConfig"]
    assert method["name"] == [{}]
    assert method["retryPolicy"] == {
        "maxAttempts": 3, "initialBackoff": "0.025s", "maxBackoff": "0.25s", "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    single = json.loads(service_config(PeerConfig("b", "10.0.0.1:1", sid, verify="dns", retries=0)))
    assert single == {"loadBalancingConfig": [{"pick_first": {}}]}


def test_dns_mode_targets_are_grpc_targets() -> None:
    sid = parse_spiffe_id(BETA)
    assert grpc_target(PeerConfig("b", "api:7001", sid, verify="dns"), None) == ("api:7001", "")
    dns_target, key = grpc_target(PeerConfig("b", "dns:///api:7001", sid, verify="dns"), (HostPort("10.0.0.1", 1),))
    assert dns_target == "dns:///api:7001" and key  # gRPC resolves; a new answer changes the key
    assert grpc_target(PeerConfig("b", "dns:///api:7001", sid, verify="dns"), ())[1] != key
    listed = PeerConfig("b", "", sid, verify="dns", addresses=("10.0.0.1:1", "10.0.0.2:2"))
    assert grpc_target(listed, None) == ("ipv4:10.0.0.1:1,10.0.0.2:2", "")
    assert list_target("b", (HostPort("::1", 1), HostPort("fe80::2", 1))) == "ipv6:[::1]:1,[fe80::2]:1"


def test_an_endpoint_spec_refuses_both_forms_and_neither() -> None:
    with pytest.raises(ConfigError, match="addresses and address are both set"):
        endpoint_spec("a:1", ("b:1",))
    with pytest.raises(ConfigError, match="address is required"):
        endpoint_spec(None, None)
