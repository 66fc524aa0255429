"""xDS resources for one peer: a Listener and a Cluster that pins its SPIFFE ID.

A channel to ``xds:///NAME`` asks the control plane for the Listener
``NAME``; its HTTP connection manager routes every call to the Cluster
``NAME``. The Cluster is ``LOGICAL_DNS`` with the peer's ``host:port`` as
its one endpoint (gRPC takes no ``STATIC`` clusters; an IP literal resolves
to itself, a name through DNS on every reconnect) and carries an
``UpstreamTlsContext``:

* the node's certificate from the ``meshnode-identity`` provider;
* roots from the provider of the *peer's* trust domain only, so a CA of
  another trust domain cannot vouch for an ID of this one;
* one SAN matcher for the peer's SPIFFE ID.

The SAN matcher is a ``safe_regex`` that matches the ID exactly, not an
``exact`` matcher: gRPC compares ``exact`` matchers with DNS rules -
ignoring ASCII case, ignoring a trailing ``.``, expanding a ``*.`` wildcard
SAN - so ``exact: spiffe://td/billing`` also accepts ``spiffe://td/BILLING``
and ``spiffe://td/billing.``. The regex is compared byte for byte
(RE2 full match). What no matcher can fix: gRPC tests the URI, IP *and* DNS
SANs against it, so a DNS SAN spelled like the SPIFFE ID also passes
(tests pin both behaviours).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from meshnode.config.node import parse_address
from meshnode.errors import ConfigError
from meshnode.spiffeid import SpiffeID, parse_spiffe_id
from meshnode.xds.bootstrap import IDENTITY_PROVIDER, roots_provider
from meshnode.xds.v3 import envoy_pb2 as pb
from meshnode.xds.v3 import pack, type_url

__all__ = [
    "CLUSTER_TYPE",
    "LISTENER_TYPE",
    "TLS_TRANSPORT_SOCKET",
    "PeerSpec",
    "PeerTarget",
    "Resources",
    "cluster",
    "listener",
    "peer_resources",
    "san_regex",
    "validate_peer_name",
]

LISTENER_TYPE = type_url(pb.Listener)
CLUSTER_TYPE = type_url(pb.Cluster)
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"

#: type URL -> resource name -> resource message
Resources = Mapping[str, Mapping[str, Any]]

_PEER_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")


class PeerSpec(Protocol):
    """What the control plane needs to know about a peer (a PeerConfig fits)."""

    @property
    def address(self) -> str: ...

    @property
    def spiffe_id(self) -> SpiffeID: ...


@dataclass(frozen=True)
class PeerTarget:
    """A validated peer: where it listens and the one SPIFFE ID it must present."""

    address: str
    spiffe_id: SpiffeID
    host: str = field(init=False)
    port: int = field(init=False)

    def __post_init__(self) -> None:
        if isinstance(self.spiffe_id, str):
            object.__setattr__(self, "spiffe_id", parse_spiffe_id(self.spiffe_id))
        if not isinstance(self.spiffe_id, SpiffeID):
            raise ConfigError(f"xds: peer spiffe_id must be a SpiffeID, got {type(self.spiffe_id).__name__}")
        if not self.spiffe_id.path:
            raise ConfigError(f"xds: peer spiffe_id {self.spiffe_id} names a trust domain, not a workload")
        host, port = parse_address(self.address, "peer address")
        if port == 0:
            raise ConfigError(f"xds: peer address {self.address!r} needs a port other than 0")
        object.__setattr__(self, "host", host.strip("[]"))
        object.__setattr__(self, "port", port)

    @classmethod
    def of(cls, peer: PeerSpec) -> PeerTarget:
        return peer if isinstance(peer, PeerTarget) else cls(peer.address, peer.spiffe_id)

    @property
    def trust_domain(self) -> str:
        """The trust domain whose bundle verifies this peer: always its ID's own."""
        return self.spiffe_id.trust_domain


def validate_peer_name(name: str) -> str:
    """Peer names become resource names and ``xds:///NAME`` targets."""
    if not isinstance(name, str) or not _PEER_NAME.fullmatch(name):
        raise ConfigError(
            f"xds: peer name {name!r} must be 1-63 letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return name


def san_regex(spiffe_id: SpiffeID) -> str:
    """An RE2 pattern that fully matches exactly ``spiffe_id`` (case-sensitive)."""
    return "".join(c if c.isalnum() or c in "/:_" else "\\" + c for c in str(spiffe_id))


def listener(name: str) -> Any:
    """The Listener behind ``xds:///name``: every call goes to the Cluster ``name``."""
    route = pb.Route(match=pb.RouteMatch(prefix=""), route=pb.RouteAction(cluster=name))
    manager = pb.HttpConnectionManager(
        route_config=pb.RouteConfiguration(
            name=name,
            virtual_hosts=[pb.VirtualHost(name=name, domains=["*"], routes=[route])],
        ),
        http_filters=[pb.HttpFilter(name="envoy.filters.http.router", typed_config=pack(pb.Router()))],
    )
    return pb.Listener(name=name, api_listener=pb.ApiListener(api_listener=pack(manager)))


def cluster(name: str, peer: PeerTarget, *, roots_provider: str, identity_provider: str) -> Any:
    """The Cluster for ``peer``: its address, and TLS pinned to its SPIFFE ID."""
    endpoint = pb.LbEndpoint(
        endpoint=pb.Endpoint(
            address=pb.Address(socket_address=pb.SocketAddress(address=peer.host, port_value=peer.port))
        )
    )
    tls = pb.UpstreamTlsContext(
        common_tls_context=pb.CommonTlsContext(
            tls_certificate_provider_instance=pb.CertificateProviderPluginInstance(instance_name=identity_provider),
            validation_context=pb.CertificateValidationContext(
                ca_certificate_provider_instance=pb.CertificateProviderPluginInstance(instance_name=roots_provider),
                match_subject_alt_names=[
                    pb.StringMatcher(safe_regex=pb.RegexMatcher(regex=san_regex(peer.spiffe_id)))
                ],
            ),
        )
    )
    return pb.Cluster(
        name=name,
        type=pb.Cluster.LOGICAL_DNS,
        load_assignment=pb.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[pb.LocalityLbEndpoints(lb_endpoints=[endpoint])],
        ),
        transport_socket=pb.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=pack(tls)),
    )


def peer_resources(peers: Mapping[str, PeerTarget], *, bundle_map: bool) -> dict[str, dict[str, Any]]:
    """Listeners and Clusters for ``peers``, referring to the bootstrap's provider instances."""
    listeners = {name: listener(name) for name in peers}
    clusters = {
        name: cluster(
            name,
            peer,
            roots_provider=roots_provider(peer.trust_domain, bundle_map=bundle_map),
            identity_provider=IDENTITY_PROVIDER,
        )
        for name, peer in peers.items()
    }
    return {LISTENER_TYPE: listeners, CLUSTER_TYPE: clusters}
