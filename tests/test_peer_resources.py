"""The xDS resources of a peer with several endpoints: EDS, the retry policy, the balancing policy,
draining endpoints; and how the endpoint monitor reads gRPC's failure texts.

What gRPC does with these resources is asserted by tests/test_peer_services.py
with real processes; here, that meshnode sends what gRPC documents (A27 EDS,
A44 retries, the pick_first extension) and that a single ``host:port`` peer
gets exactly the resources it got before (LOGICAL_DNS, no EDS).
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509

from meshnode.config.node import PeerConfig
from meshnode.config.targets import HostPort
from meshnode.devagent.ca import DevCA
from meshnode.endpoint_monitor import _presented, identity_failure
from meshnode.spiffeid import parse_spiffe_id
from meshnode.xds import resources as xres
from meshnode.xds.v3 import envoy_pb2 as pb
from meshnode.xds.v3 import unpack

BETA = "spiffe://example.org/node/beta"
E1, E2, E3 = HostPort("10.0.0.1", 7001), HostPort("10.0.0.2", 7001), HostPort("fd00::3", 7001)


def route_action(listener: pb.Listener) -> pb.RouteAction:
    manager = unpack(listener.api_listener.api_listener, pb.HttpConnectionManager)
    action: pb.RouteAction = manager.route_config.virtual_hosts[0].routes[0].route
    return action


def test_a_peer_with_endpoints_gets_an_eds_cluster_and_its_endpoints() -> None:
    peer = xres.PeerTarget("dns:///beta:7001", parse_spiffe_id(BETA), (E1, E2, E3))
    resources = xres.peer_resources({"beta": peer}, bundle_map=True)
    cluster = resources[xres.CLUSTER_TYPE]["beta"]
    assert cluster.type == pb.Cluster.EDS
    assert cluster.eds_cluster_config.eds_config.HasField("ads")
    assert not cluster.HasField("load_balancing_policy")  # round robin: gRPC's default for a Cluster
    assert cluster.transport_socket.name == xres.TLS_TRANSPORT_SOCKET  # every endpoint: the same ID check
    [locality] = resources[xres.ENDPOINTS_TYPE]["beta"].endpoints
    assert locality.locality.zone and locality.load_balancing_weight.value == 1
    addresses = [(e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
                 for e in locality.lb_endpoints]
    assert addresses == [("10.0.0.1", 7001), ("10.0.0.2", 7001), ("fd00::3", 7001)]
    assert {e.health_status for e in locality.lb_endpoints} == {pb.HEALTHY}


def test_a_host_port_peer_keeps_its_logical_dns_cluster() -> None:
    config = PeerConfig("beta", "beta.internal:7001", parse_spiffe_id(BETA))
    resources = xres.peer_resources({"beta": xres.PeerTarget.of(config)}, bundle_map=True)
    assert resources[xres.CLUSTER_TYPE]["beta"].type == pb.Cluster.LOGICAL_DNS
    assert xres.ENDPOINTS_TYPE not in resources


def test_retries_become_the_routes_retry_policy() -> None:
    peer = xres.PeerTarget("x", parse_spiffe_id(BETA), (E1,), retries=3,
                           retry_on=("UNAVAILABLE", "RESOURCE_EXHAUSTED"))
    policy = route_action(xres.listener("beta", peer)).retry_policy
    assert policy.retry_on == "unavailable,resource-exhausted"
    assert policy.num_retries.value == 3
    assert policy.retry_back_off.base_interval.ToMilliseconds() == 25
    assert policy.retry_back_off.max_interval.ToMilliseconds() == 250
    off = xres.PeerTarget("x", parse_spiffe_id(BETA), (E1,), retries=0)
    assert not route_action(xres.listener("beta", off)).HasField("retry_policy")


def test_pick_first_is_the_pick_first_extension() -> None:
    peer = xres.PeerTarget("x", parse_spiffe_id(BETA), (E1, E2), lb="pick_first")
    cluster = xres.peer_resources({"beta": peer}, bundle_map=False)[xres.CLUSTER_TYPE]["beta"]
    [policy] = cluster.load_balancing_policy.policies
    assert policy.typed_extension_config.typed_config.type_url.endswith(
        "envoy.extensions.load_balancing_policies.pick_first.v3.PickFirst")


def test_draining_endpoints_are_marked_unless_all_drain() -> None:
    peer = xres.PeerTarget("x", parse_spiffe_id(BETA), (E1, E2)).with_endpoints((E1, E2), frozenset({E2}))

    def statuses(target: xres.PeerTarget) -> list[int]:
        cla = xres.peer_resources({"beta": target}, bundle_map=False)[xres.ENDPOINTS_TYPE]["beta"]
        return [e.health_status for e in cla.endpoints[0].lb_endpoints]

    assert statuses(peer) == [pb.HEALTHY, pb.DRAINING]
    everyone = peer.with_endpoints((E1, E2), frozenset({E1, E2}))
    assert statuses(everyone) == [pb.HEALTHY, pb.HEALTHY]  # better than no endpoint
    assert peer.with_endpoints((E1,)).draining == frozenset()  # a removed endpoint is forgotten


def test_a_peer_config_with_endpoints_is_a_peer_spec() -> None:
    config = PeerConfig("beta", "", parse_spiffe_id(BETA), addresses=("10.0.0.1:7001", "10.0.0.2:7001"),
                        retries=1, lb="pick_first")
    target = xres.PeerTarget.of(config)
    assert (target.endpoints, target.lb, target.retries) == ((E1, E2), "pick_first", 1)
    named = xres.PeerTarget.of(PeerConfig("beta", "dns:///api:7001", parse_spiffe_id(BETA)))
    assert named.endpoints == ()  # resolved by the node, then served with set_endpoints
    assert xres.PeerTarget.of(PeerConfig("beta", "dns:///api:7001", parse_spiffe_id(BETA)), (E3,)).endpoints == (E3,)


def test_health_targets_have_names_of_their_own() -> None:
    assert xres.health_resource_name("beta", E3) == "meshnode.health.beta.fd00__3.7001"


def test_the_monitor_tells_identity_failures_from_others() -> None:
    assert identity_failure("UNKNOWN: ipv4:1.2.3.4:1: ... SANs from certificate did not match SANs from xDS "
                            "control plane") == "spiffe_id"
    assert identity_failure("... UNAUTHENTICATED: Hostname Verification Check failed.") == "dns_name"
    assert identity_failure("Handshake failed ... CERTIFICATE_VERIFY_FAILED") == "chain"
    assert identity_failure("UNKNOWN: ipv4:1.2.3.4:1: Failed to connect to remote host: Connection refused") is None
    assert identity_failure(None) is None


def test_the_monitor_names_what_a_certificate_presents() -> None:
    ca = DevCA("example.org")
    leaf: x509.Certificate = ca.issue("spiffe://example.org/node/mallory", dt.timedelta(hours=1)).chain[0]
    presented, dns = _presented(leaf)
    assert presented == "spiffe://example.org/node/mallory" and dns


def test_what_a_hostile_certificate_presents_stays_one_line() -> None:
    from cryptography.x509 import load_pem_x509_certificate

    from tests.support.xds import RawCA

    _key, chain = RawCA("hostile").issue(uris=["spiffe://example.org/x\nmeshnode.peers WARNING forged"],
                                         dns=["a\rb.example"])
    presented, dns = _presented(load_pem_x509_certificate(chain))
    assert presented == "spiffe://example.org/x\\nmeshnode.peers WARNING forged"
    assert dns == ["a\\rb.example"]
