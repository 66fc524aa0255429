"""spiffe-id peers verified with SPIFFE bundle maps (gRFC A87): meshnode's mode, its start-up probe,
and pins of what this grpcio does with maps. Each scenario runs in its own process
(tests/support/xds_scenarios.py): gRPC reads the xDS bootstrap and the A87 variable from the environment."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.xds import run_scenario

SERVER_ID = "spiffe://example.org/server"
NO_MAP = 'at least one of "certificate_file" and "ca_certificate_file" must be specified'


# -- the node's mode: one map per peer trust domain ------------------------------------------------


@pytest.fixture(scope="module")
def bundle_map() -> dict[str, Any]:
    return run_scenario("bundle-map")


def test_the_probe_runs_at_start(bundle_map: dict[str, Any]) -> None:
    assert bundle_map["start"] == "started" and bundle_map["probe_ran"]
    assert bundle_map["env_flag"] == "true"  # meshnode set it: gRPC reads maps only with it
    for names in bundle_map["served"].values():  # the peers, and the two probe peers (under reserved names)
        assert names == ["cross-td-dns-san", "foreign-claim", "meshnode.a87-probe.forged",
                         "meshnode.a87-probe.honest", "other-id", "other-td", "own-td", "third-td"]


def test_each_peer_trust_domain_has_a_map_of_its_own(bundle_map: dict[str, Any]) -> None:
    # third.org: no bundle yet, so roots that verify nothing (not an empty map: see meshnode.xds.files)
    assert bundle_map["maps"] == {td: [td] for td in ("example.org", "other.org", "third.org")}
    assert "bundles.json" not in bundle_map["files"]


def test_peers_are_verified_with_their_own_trust_domain_bundle(bundle_map: dict[str, Any]) -> None:
    results = bundle_map["results"]
    assert results["own-td"]["ok"] and results["other-td"]["ok"]
    other_id = results["other-id"]
    assert not other_id["ok"] and "is not for spiffe://example.org/server" in other_id["explained"]
    foreign = results["foreign-claim"]  # other.org's CA, an example.org ID
    assert not foreign["ok"] and "CERTIFICATE_VERIFY_FAILED" in foreign["details"]


def test_a_federated_ca_cannot_pass_as_a_peer_through_a_dns_san(bundle_map: dict[str, Any]) -> None:
    """other.org's CA issues spiffe://other.org/evil with a DNS SAN 'spiffe://example.org/server'.

    gRPC's SAN matcher also matches DNS SANs, and with one map of every trust domain A87 would
    pick other.org's bundle (the URI SAN's) and let it through (pinned below): a map per peer
    trust domain refuses it.
    """
    result = bundle_map["results"]["cross-td-dns-san"]
    assert not result["ok"] and "CERTIFICATE_VERIFY_FAILED" in result["details"]


def test_a_bundle_that_arrives_or_goes_away_needs_no_restart(bundle_map: dict[str, Any]) -> None:
    no_bundle = bundle_map["results"]["third-td"]
    assert not no_bundle["ok"] and "this node has no trust bundle for 'third.org'" in no_bundle["explained"]
    assert bundle_map["bundle_added"]  # the open channel reaches the peer once the bundle is there
    assert bundle_map["bundle_removed"]  # new handshakes fail once it is gone
    assert "this node has no trust bundle for 'third.org'" in bundle_map["after_removal"]["explained"]


def test_a_peer_in_a_trust_domain_unknown_at_start_needs_a_restart(bundle_map: dict[str, Any]) -> None:
    assert bundle_map["late_td"].startswith("PeerError: xds: node 'bundle-map' started with roots for example.org, "
                                            "other.org, third.org; peers in fourth.org need a restart")


def test_a87_set_to_false_refuses_the_start() -> None:
    out = run_scenario("bundle-map", env={"GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE": "false"})
    assert out["start"].startswith("ConfigError: xds: spiffe-id peers are verified with SPIFFE bundle maps")
    assert "GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true, but it is 'false'" in out["start"]


# -- the start-up probe against the real grpcio ---------------------------------------------------


def test_the_probe_passes_when_grpc_applies_the_map() -> None:
    assert run_scenario("a87-probe", {"mode": "map", "flag": "true"})["result"].startswith("passed in ")


def test_the_probe_refuses_a_grpc_that_does_not_read_the_map() -> None:
    result = run_scenario("a87-probe", {"mode": "map"})["result"]
    assert result.startswith("PeerError: xds: gRPC did not verify a peer with a SPIFFE bundle map (gRFC A87)")
    assert "Failed to create XdsClient" in result


def test_the_probe_refuses_the_silent_fallback_to_a_flat_root_list() -> None:
    """A CA file beside the map without the variable: gRPC verifies with the flat file (pinned below)."""
    result = run_scenario("a87-probe", {"mode": "map+flat"})["result"]
    assert result.startswith("PeerError: xds: gRPC accepted a certificate of one trust domain's CA for an ID "
                             "of another while verifying with a SPIFFE bundle map")


# -- pins: what this grpcio does with maps (if one fails after an upgrade, revisit meshnode.xds.a87) --


@pytest.mark.parametrize("flag", [None, "false"])
def test_pin_without_the_variable_grpc_refuses_a_provider_with_only_a_map(flag: str | None) -> None:
    out = run_scenario("a87-pins", {"mode": "map", "flag": flag})
    for result in out.values():
        assert not result["ok"] and "Failed to create XdsClient" in result["details"], result
        assert NO_MAP in result["details"]


def test_pin_with_the_variable_set_late_grpc_verifies_per_trust_domain() -> None:
    """Set after gRPC served and dialled: gRPC reads it when it makes a target's xDS client."""
    out = run_scenario("a87-pins", {"mode": "map", "flag": "true"})
    assert out["own-td"]["ok"]
    assert not out["foreign-claim"]["ok"] and "CERTIFICATE_VERIFY_FAILED" in out["foreign-claim"]["details"]
    assert not out["dns-san-only"]["ok"]  # A87: a certificate without a SPIFFE ID is refused
    assert out["cross-td-dns-san"]["ok"]  # the trap a single map leaves open (see above)


def test_pin_a_map_with_a_key_grpc_does_not_take_fails_every_handshake() -> None:
    """Even after a good map was read (A87 says the old map should stay): meshnode writes EC/RSA x5c keys only."""
    bad = run_scenario("a87-pins", {"mode": "map", "flag": "true"})["bad-key"]
    assert bad["own_td_fails"] and "Failed to create security handshaker" in bad["details"]
    assert bad["recovers"]  # a good map again: handshakes work again


def test_pin_a_flat_ca_file_beside_the_map_is_used_silently_without_the_variable() -> None:
    out = run_scenario("a87-pins", {"mode": "map+flat"})
    assert out["own-td"]["ok"] and out["foreign-claim"]["ok"] and out["dns-san-only"]["ok"]
    flagged = run_scenario("a87-pins", {"mode": "map+flat", "flag": "true"})
    assert flagged["own-td"]["ok"] and not flagged["foreign-claim"]["ok"]  # with it, the map wins
