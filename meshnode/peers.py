"""The node's channels to its configured peers, one verification mode each.

A peer is a service: one SPIFFE ID, one or more endpoints
(:mod:`meshnode.config.targets`). Calls are balanced over the endpoints
(round robin per call, or pick first), retried on ``retry_on`` codes, and
get the peer's ``timeout`` when the caller gives no deadline.

* ``dns``: ``ssl_channel_credentials`` with roots of the peer's trust domain
  only and ``grpc.ssl_target_name_override`` pinned to the peer's DNS name
  (``server_name``, default: the name mapped from its SPIFFE ID), gRPC's own
  resolver and a service config (:mod:`meshnode.peer_plans`). Rebuilt on
  every rotation, and when meshnode's resolution of the peer changed (see
  :mod:`meshnode.channel`).
* ``spiffe-id``: an ``xds:///peer`` channel whose TLS config, served by the
  node's embedded xDS control plane, pins the peer's exact SPIFFE ID; the
  control plane also serves the endpoints (EDS) and the retry policy.

Endpoints meshnode resolves (``dns:///``, host names in ``addresses``) are
kept current by an :class:`~meshnode.endpoint_watch.EndpointWatch` per
peer; an :class:`~meshnode.endpoint_monitor.EndpointMonitor` notices failed
connections (re-resolve) and endpoints gRPC refused for their identity
(logged once, counted).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from meshnode.channel import CallAuth, ChannelPlan, PeerChannel
from meshnode.config.node import PeerConfig
from meshnode.config.targets import HostPort
from meshnode.credentials import channel_credentials
from meshnode.endpoint_monitor import EndpointMonitor, MonitoredPeer
from meshnode.endpoint_watch import EndpointWatch
from meshnode.errors import MeshnodeError, PeerError
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.identity.source import IdentitySource
from meshnode.peer_plans import channelz_target, grpc_target, service_config
from meshnode.resolver import Resolution, resolve
from meshnode.telemetry.rpcmetrics import CallSeries, RpcMetrics

__all__ = ["Liveness", "PeerChannels", "explain_dns_error"]

log = logging.getLogger("meshnode.channel")

T = TypeVar("T")


def explain_dns_error(peer: PeerConfig, err: grpc.aio.AioRpcError) -> str | None:
    """meshnode's wording for TLS failures of a dns-mode channel (None: leave as is)."""
    if err.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    details = err.details() or ""
    where = f"peer '{peer.name}' ({peer.where})"
    if "Hostname Verification Check failed" in details or "not in peer certificate" in details:
        return (
            f"meshnode: {where} presented a certificate without the DNS name '{peer.tls_name}' that "
            f"stands for {peer.spiffe_id}. grpcio verifies servers only by DNS SAN: add it to the peer's "
            f"SVID (SPIRE: spire-server entry create ... -dns {peer.tls_name}), or use "
            f"verify = \"spiffe-id\" for this peer. [{details}]"
        )
    lowered = details.lower()
    if "certificate verify failed" in lowered or "certificate_verify_failed" in lowered:
        return (
            f"meshnode: {where} presented a certificate that does not chain to the bundle of trust domain "
            f"'{peer.spiffe_id.trust_domain}' (another trust domain or CA?). [{details}]"
        )
    return None


@dataclass(frozen=True)
class Liveness:
    """How peer connections find a dead peer: ``[node] keepalive`` and ``connect_timeout`` (seconds)."""

    keepalive: float = 10.0
    connect_timeout: float = 5.0

    def options(self) -> tuple[tuple[str, int], ...]:
        """Keepalive pings find a dead peer connection; a connect timeout ends hopeless dials,
        so calls fail with UNAVAILABLE instead of waiting out their deadline."""
        options: list[tuple[str, int]] = [("grpc.min_reconnect_backoff_ms", int(self.connect_timeout * 1000))]
        if self.keepalive > 0:
            options += [
                ("grpc.keepalive_time_ms", int(self.keepalive * 1000)),
                ("grpc.keepalive_timeout_ms", int(max(self.keepalive / 2, 1.0) * 1000)),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_pings_without_data", 0),
            ]
        return tuple(options)


class PeerChannels:
    """Creates peer channels lazily and feeds them every new snapshot of ``source``.

    ``resolved``: endpoints already resolved (by the boot plan) for peers
    whose endpoints meshnode resolves; the others are resolved at :meth:`start`.
    """

    def __init__(
        self,
        source: IdentitySource,
        peers: Mapping[str, PeerConfig],
        *,
        node_name: str,
        liveness: Liveness = Liveness(),  # frozen: safe as a default
        tracing: bool = False,
        tracer_provider: Any = None,
        call_auth: Mapping[str, CallAuth] | None = None,
        resolved: Mapping[str, Resolution] | None = None,
        monitor: EndpointMonitor | None = None,
        rpc_metrics: RpcMetrics | None = None,
    ) -> None:
        """``call_auth``: per-call credentials by peer name (the JWT-SVID slots of ``jwt = true`` peers)."""
        self._source = source
        self._call_auth = dict(call_auth or {})
        self._rpc_metrics = rpc_metrics
        self._node_name = node_name
        self._peers = dict(peers)
        self._liveness = liveness
        self._tracing = tracing
        self._tracer_provider = tracer_provider
        self._resolved = dict(resolved or {})
        self._channels: dict[str, PeerChannel] = {}
        self._stubs: dict[tuple[str, type[Any]], Any] = {}
        self._unsubscribe: Any = None
        self._xds: Any = None
        self._watches: dict[str, EndpointWatch] = {}
        self.monitor = monitor or EndpointMonitor()

    async def start(self) -> None:
        self._unsubscribe = self._source.subscribe(self._updated)
        for name, peer in self._peers.items():
            if peer.endpoints.resolved_by_meshnode:
                initial = self._resolved.get(name) or await self._first_resolution(peer)
                self._watches[name] = EndpointWatch(name, peer.endpoints, self._on_endpoints(name),
                                                    initial=initial)
        spiffe_id_peers = {n: p for n, p in self._peers.items() if p.verify == "spiffe-id"}
        if spiffe_id_peers:
            from meshnode.xds.node import start_control_plane

            endpoints = {n: w.endpoints for n, w in self._watches.items()}
            self._xds = await start_control_plane(
                self._node_name, self._source, spiffe_id_peers, self._liveness.options(), endpoints=endpoints
            )
            # a snapshot published while the control plane started must not be lost
            self._xds.update_identity(self._source.current())
        for watch in self._watches.values():
            watch.start()
        self.monitor.start()

    @staticmethod
    async def _first_resolution(peer: PeerConfig) -> Resolution | None:
        try:
            return await asyncio.to_thread(resolve, peer.endpoints)
        except MeshnodeError as exc:
            log.warning("peers: cannot resolve peer '%s' (%s) now; retrying in the background: %s", peer.name,
                        peer.where, exc)
            return None

    def _on_endpoints(self, name: str) -> Any:
        peer = self._peers[name]

        def changed(endpoints: tuple[HostPort, ...]) -> None:
            if peer.verify == "spiffe-id":
                if self._xds is not None:
                    self._xds.set_endpoints(name, endpoints)
            else:
                channel = self._channels.get(name)
                if channel is not None:
                    channel.update(self._source.current())  # a new plan: the target or key changed

        return changed

    def endpoints(self, name: str) -> tuple[HostPort, ...] | None:
        """The endpoints meshnode resolved for peer ``name`` now (None: gRPC resolves them itself)."""
        watch = self._watches.get(name)
        return watch.endpoints if watch is not None else None

    def _updated(self, snapshot: IdentitySnapshot) -> None:
        if self._xds is not None:
            self._xds.update_identity(snapshot)
        for channel in list(self._channels.values()):
            channel.update(snapshot)

    def _interceptors(self, peer: PeerConfig) -> list[Any]:
        if not self._tracing:
            return []
        from meshnode.telemetry.grpc import client_interceptors

        return client_interceptors(
            local_id=self._source.current().spiffe_id, node_name=self._node_name, peer_id=peer.spiffe_id,
            peer_name=peer.name, tracer_provider=self._tracer_provider, address=peer.address,
        )

    def _monitored(self, peer: PeerConfig) -> MonitoredPeer:
        watch = self._watches.get(peer.name)
        return MonitoredPeer(peer.name, peer.spiffe_id, peer.tls_name if peer.verify == "dns" else None,
                             watch.refresh if watch is not None else _nothing)

    def _series(self, peer: PeerConfig) -> Callable[[str], CallSeries] | None:
        """The client RPC metrics series of ``peer``'s methods (None: no RPC metrics)."""
        metrics = self._rpc_metrics
        if metrics is None:
            return None
        peer_id = str(peer.spiffe_id)
        return lambda method: metrics.series("client", method, peer_id)

    def _dns_plan(self, peer: PeerConfig, snapshot: IdentitySnapshot) -> ChannelPlan:
        td = peer.spiffe_id.trust_domain
        target, endpoints = grpc_target(peer, self.endpoints(peer.name))
        self.monitor.watch(channelz_target(target), self._monitored(peer))
        return ChannelPlan(
            key=f"{snapshot.svid_fingerprint}:{snapshot.bundle_fingerprint(td)}:{endpoints}",
            target=target,
            credentials=channel_credentials(snapshot, td),
            options=(
                ("grpc.ssl_target_name_override", peer.tls_name),
                ("grpc.default_authority", peer.tls_name),
                ("grpc.service_config", service_config(peer)),
                *self._liveness.options(),
            ),
            not_after=snapshot.not_after,
        )

    def channel(self, name: str) -> PeerChannel:
        found = self._channels.get(name)
        if found is not None:
            return found
        peer = self._peers.get(name)
        if peer is None:
            known = ", ".join(sorted(self._peers)) or "none"
            raise PeerError(reason=f"no peer named {name!r} in [peers] (configured: {known})", component="node")
        snapshot = self._source.current()
        if peer.verify == "spiffe-id":
            xds = self._xds
            self.monitor.watch(f"xds:///{name}", self._monitored(peer))
            channel = PeerChannel(
                name, snapshot, lambda _s: xds.plan(name), interceptors=self._interceptors(peer),
                explain=lambda err: xds.explain(name, err), call_auth=self._call_auth.get(name),
                series=self._series(peer),
                timeout=peer.timeout,
            )
        else:
            channel = PeerChannel(
                name, snapshot, lambda s: self._dns_plan(peer, s), interceptors=self._interceptors(peer),
                explain=lambda err: explain_dns_error(peer, err), call_auth=self._call_auth.get(name),
                series=self._series(peer),
                timeout=peer.timeout,
            )
        self._channels[name] = channel
        # a rotation published after the read above found no channel to update: replay the latest
        # (a no-op when nothing changed, the plan key is the same)
        channel.update(self._source.current())
        return channel

    def stub(self, name: str, stub_class: type[T]) -> T:
        key = (name, stub_class)
        found = self._stubs.get(key)
        if found is None:
            found = stub_class(self.channel(name))  # type: ignore[call-arg]  # generated stubs take a channel
            self._stubs[key] = found
        return found

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        await self.monitor.close()
        for watch in self._watches.values():
            await watch.close()
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._stubs.clear()
        if self._xds is not None:
            await self._xds.close()
            self._xds = None


def _nothing() -> None:
    return None
