"""xDS resources for one peer: a Listener, a Cluster that pins its SPIFFE ID, its endpoints.

A channel to ``xds:///NAME`` asks the control plane for the Listener
``NAME``; its HTTP connection manager routes every call to the Cluster
``NAME``, with the peer's retry policy (gRFC A44: ``retries`` more attempts
on the ``retry_on`` codes, exponential backoff from 25 ms, within the
call's deadline). The Cluster is one of:

* ``LOGICAL_DNS`` with the peer's ``host:port`` as its one endpoint, for a
  peer configured as ``address = "host:port"`` (as before: gRPC takes no
  ``STATIC`` clusters; an IP literal resolves to itself, a name through DNS
  on every reconnect);
* ``EDS`` for a peer with an endpoint list (``addresses``, ``ipv4:``,
  ``ipv6:``, ``dns:///``): the control plane serves a
  ``ClusterLoadAssignment`` ``NAME`` with every endpoint (IP addresses,
  which meshnode resolves and updates), balanced ``round_robin`` (gRPC's
  default for a Cluster) or ``pick_first`` (``load_balancing_policy``).
  An endpoint whose server says NOT_SERVING (it drains before stopping,
  :mod:`meshnode.xds.endpoint_health`) is served as ``DRAINING``: gRPC
  sends it no new calls (unless every endpoint drains: then none is marked).

Either way the Cluster carries an ``UpstreamTlsContext``:

* the node's certificate from the ``meshnode-identity`` provider;
* roots from the provider of the *peer's* trust domain only, so a CA of
  another trust domain cannot vouch for an ID of this one;
* both in the control plane's current provider slot (``#n``, see
  :mod:`meshnode.xds.bootstrap`): a new slot makes gRPC build new
  subchannels whose handshakes read the current files;
* one SAN matcher for the peer's SPIFFE ID, checked on every endpoint's
  handshake: an endpoint presenting another identity fails its handshake
  and the balancer routes around it.

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

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf import duration_pb2, wrappers_pb2

from meshnode.config.node import RETRYABLE_CODES, parse_address
from meshnode.config.targets import MAX_ENDPOINTS, EndpointSpec, HostPort
from meshnode.errors import ConfigError
from meshnode.spiffeid import SpiffeID, parse_spiffe_id
from meshnode.xds.bootstrap import IDENTITY_PROVIDER, in_slot, roots_provider
from meshnode.xds.v3 import envoy_pb2 as pb
from meshnode.xds.v3 import pack, type_url

__all__ = [
    "CLUSTER_TYPE",
    "ENDPOINTS_TYPE",
    "LISTENER_TYPE",
    "TLS_TRANSPORT_SOCKET",
    "PeerSpec",
    "PeerTarget",
    "Resources",
    "cluster",
    "health_resource_name",
    "listener",
    "load_assignment",
    "peer_resources",
    "retry_policy",
    "san_regex",
    "validate_peer_name",
]

LISTENER_TYPE = type_url(pb.Listener)
CLUSTER_TYPE = type_url(pb.Cluster)
ENDPOINTS_TYPE = type_url(pb.ClusterLoadAssignment)
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"

#: type URL -> resource name -> resource message
Resources = Mapping[str, Mapping[str, Any]]

_PEER_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")
#: gRPC's locality of every endpoint (EDS needs one; meshnode balances over endpoints, not zones)
LOCALITY = "meshnode"
#: Retry backoff: the first wait (xDS default), the longest (gRPC then adds jitter)
RETRY_BASE_INTERVAL = 0.025
RETRY_MAX_INTERVAL = 0.25


class PeerSpec(Protocol):
    """What the control plane needs to know about a peer (a PeerConfig fits)."""

    @property
    def address(self) -> str: ...

    @property
    def spiffe_id(self) -> SpiffeID: ...

    @property
    def endpoints(self) -> EndpointSpec: ...

    @property
    def lb(self) -> str | None: ...

    @property
    def retries(self) -> int: ...

    @property
    def retry_on(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class PeerTarget:
    """A validated peer: where it listens and the one SPIFFE ID every endpoint must present.

    ``endpoints`` None: one logical endpoint, ``address`` as ``host:port``
    (a LOGICAL_DNS Cluster; ``host``/``port`` are its parts). A tuple: the
    peer's endpoints now, IP addresses (an EDS Cluster; ``address`` is the
    configured text, for messages; ``host`` is "" and ``port`` 0).
    """

    address: str
    spiffe_id: SpiffeID
    endpoints: tuple[HostPort, ...] | None = None
    lb: str = "round_robin"
    retries: int = 2
    retry_on: tuple[str, ...] = ("UNAVAILABLE",)
    #: endpoints whose server said NOT_SERVING: served as DRAINING (gRPC sends them no new calls)
    draining: frozenset[HostPort] = frozenset()
    host: str = field(init=False)
    port: int = field(init=False)

    def __post_init__(self) -> None:
        if isinstance(self.spiffe_id, str):
            object.__setattr__(self, "spiffe_id", parse_spiffe_id(self.spiffe_id))
        if not isinstance(self.spiffe_id, SpiffeID):
            raise ConfigError(f"xds: peer spiffe_id must be a SpiffeID, got {type(self.spiffe_id).__name__}")
        if not self.spiffe_id.path:
            raise ConfigError(f"xds: peer spiffe_id {self.spiffe_id} names a trust domain, not a workload")
        if self.lb not in ("round_robin", "pick_first"):
            raise ConfigError(f"xds: peer lb must be round_robin or pick_first, not {self.lb!r}")
        if not 0 <= self.retries <= 4 or any(code not in RETRYABLE_CODES for code in self.retry_on):
            raise ConfigError(f"xds: peer retries {self.retries} on {self.retry_on} is not a retry policy gRPC takes")
        if self.endpoints is not None:
            bad = [str(e) for e in self.endpoints if e.ip is None or not 0 < e.port <= 65535]
            if bad or len(self.endpoints) > MAX_ENDPOINTS:
                raise ConfigError(f"xds: peer endpoints must be at most {MAX_ENDPOINTS} IP:port, not {bad[:3]}")
            object.__setattr__(self, "host", "")
            object.__setattr__(self, "port", 0)
            return
        host, port = parse_address(self.address, "peer address")
        if port == 0:
            raise ConfigError(f"xds: peer address {self.address!r} needs a port other than 0")
        object.__setattr__(self, "host", host.strip("[]"))
        object.__setattr__(self, "port", port)

    @classmethod
    def of(cls, peer: PeerSpec | PeerTarget, endpoints: tuple[HostPort, ...] | None = None) -> PeerTarget:
        """The target of a configured peer; ``endpoints``: its endpoints now (for a peer with a list)."""
        if isinstance(peer, PeerTarget):
            return peer
        spec = peer.endpoints
        settings = {"lb": peer.lb or "round_robin", "retries": peer.retries, "retry_on": tuple(peer.retry_on)}
        if spec.kind == "single":
            return cls(peer.address, peer.spiffe_id, None, **settings)  # type: ignore[arg-type]
        if endpoints is None:
            endpoints = spec.hosts if not spec.resolved_by_meshnode else ()
        return cls(spec.text, peer.spiffe_id, endpoints, **settings)  # type: ignore[arg-type]

    def with_endpoints(
        self, endpoints: tuple[HostPort, ...], draining: frozenset[HostPort] | None = None
    ) -> PeerTarget:
        """This peer with another endpoint list (an EDS peer only), and which of them drain."""
        if self.endpoints is None:
            raise ConfigError(f"xds: peer {self.address} is one logical endpoint; it takes no endpoint list")
        kept = self.draining if draining is None else draining
        return dataclasses.replace(self, endpoints=endpoints, draining=kept & frozenset(endpoints))

    @property
    def served_draining(self) -> frozenset[HostPort]:
        """The endpoints served as DRAINING: none when all would be (the draining ones still serve,
        and calls are better sent to them than failed)."""
        assert self.endpoints is not None
        return frozenset() if set(self.endpoints) <= self.draining else self.draining

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


def health_resource_name(peer: str, endpoint: HostPort) -> str:
    """The resource name (and ``xds:///`` path) that reaches one endpoint of ``peer`` for health watching."""
    host = endpoint.host.replace(":", "_").replace("%", "_")
    return f"meshnode.health.{peer}.{host}.{endpoint.port}"


def san_regex(spiffe_id: SpiffeID) -> str:
    """An RE2 pattern that fully matches exactly ``spiffe_id`` (case-sensitive)."""
    return "".join(c if c.isalnum() or c in "/:_" else "\\" + c for c in str(spiffe_id))


def retry_policy(retries: int, retry_on: tuple[str, ...]) -> Any:
    """gRFC A44's retry policy: ``retries`` more attempts on ``retry_on``, exponential backoff."""
    return pb.RetryPolicy(
        retry_on=",".join(code.lower().replace("_", "-") for code in retry_on),
        num_retries=wrappers_pb2.UInt32Value(value=retries),
        retry_back_off=pb.RetryPolicy.RetryBackOff(
            base_interval=_duration(RETRY_BASE_INTERVAL), max_interval=_duration(RETRY_MAX_INTERVAL)
        ),
    )


def _duration(seconds: float) -> Any:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))


def listener(name: str, peer: PeerTarget | None = None) -> Any:
    """The Listener behind ``xds:///name``: every call goes to the Cluster ``name``, with ``peer``'s retries."""
    action = pb.RouteAction(cluster=name)
    if peer is not None and peer.retries > 0:
        action.retry_policy.CopyFrom(retry_policy(peer.retries, peer.retry_on))
    route = pb.Route(match=pb.RouteMatch(prefix=""), route=action)
    manager = pb.HttpConnectionManager(
        route_config=pb.RouteConfiguration(
            name=name,
            virtual_hosts=[pb.VirtualHost(name=name, domains=["*"], routes=[route])],
        ),
        http_filters=[pb.HttpFilter(name="envoy.filters.http.router", typed_config=pack(pb.Router()))],
    )
    return pb.Listener(name=name, api_listener=pb.ApiListener(api_listener=pack(manager)))


def _lb_endpoint(host: str, port: int, *, draining: bool = False) -> Any:
    return pb.LbEndpoint(
        endpoint=pb.Endpoint(address=pb.Address(socket_address=pb.SocketAddress(address=host, port_value=port))),
        health_status=pb.DRAINING if draining else pb.HEALTHY,
    )


def load_assignment(name: str, endpoints: tuple[HostPort, ...], draining: frozenset[HostPort] = frozenset()) -> Any:
    """The ClusterLoadAssignment ``name``: every endpoint, in one locality; ``draining`` ones marked so."""
    return pb.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            pb.LocalityLbEndpoints(
                locality=pb.Locality(zone=LOCALITY),
                lb_endpoints=[_lb_endpoint(e.host, e.port, draining=e in draining) for e in endpoints],
                load_balancing_weight=wrappers_pb2.UInt32Value(value=1),
            )
        ],
    )


def cluster(name: str, peer: PeerTarget, *, roots_provider: str, identity_provider: str) -> Any:
    """The Cluster for ``peer``: its endpoints, and TLS pinned to its SPIFFE ID."""
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
    transport = pb.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=pack(tls))
    if peer.endpoints is None:
        return pb.Cluster(
            name=name,
            type=pb.Cluster.LOGICAL_DNS,
            load_assignment=pb.ClusterLoadAssignment(
                cluster_name=name,
                endpoints=[pb.LocalityLbEndpoints(lb_endpoints=[_lb_endpoint(peer.host, peer.port)])],
            ),
            transport_socket=transport,
        )
    result = pb.Cluster(
        name=name,
        type=pb.Cluster.EDS,
        eds_cluster_config=pb.Cluster.EdsClusterConfig(
            eds_config=pb.ConfigSource(ads=pb.AggregatedConfigSource(), resource_api_version=pb.V3)
        ),
        transport_socket=transport,
    )
    if peer.lb == "pick_first":
        result.load_balancing_policy.policies.add().typed_extension_config.CopyFrom(pb.TypedExtensionConfig(
            name="envoy.load_balancing_policies.pick_first", typed_config=pack(pb.PickFirst()),
        ))
    return result


def peer_resources(
    peers: Mapping[str, PeerTarget], *, bundle_map: bool, slot: int = 0
) -> dict[str, dict[str, Any]]:
    """Listeners, Clusters and endpoints for ``peers``, referring to the bootstrap's provider
    instances of slot ``slot``."""
    listeners = {name: listener(name, peer) for name, peer in peers.items()}
    clusters = {
        name: cluster(
            name,
            peer,
            roots_provider=in_slot(roots_provider(peer.trust_domain, bundle_map=bundle_map), slot),
            identity_provider=in_slot(IDENTITY_PROVIDER, slot),
        )
        for name, peer in peers.items()
    }
    endpoints = {
        name: load_assignment(name, peer.endpoints, peer.served_draining)
        for name, peer in peers.items()
        if peer.endpoints is not None
    }
    out = {LISTENER_TYPE: listeners, CLUSTER_TYPE: clusters}
    if endpoints:
        out[ENDPOINTS_TYPE] = endpoints
    return out
