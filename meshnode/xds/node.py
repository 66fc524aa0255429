"""The node's side of the xDS control plane: channel plans for spiffe-id peers.

A spiffe-id peer gets one ``xds:///<peer>`` channel for good: its
endpoints change through EDS (:meth:`NodeXds.set_endpoints`), and the
control plane hands a new SVID or bundle to gRPC by serving the Clusters in
a fresh certificate provider slot (:mod:`meshnode.xds.slots`), so rotation
needs no new channel (the plan's key never changes): gRPC makes new
connections, whose handshakes present the new certificate, and the calls in
flight finish on the old ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import grpc

from meshnode.channel import ChannelPlan
from meshnode.config.node import PeerConfig
from meshnode.config.targets import HostPort
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.identity.source import SvidSource
from meshnode.xds.control_plane import XdsControlPlane
from meshnode.xds.endpoint_health import EndpointHealth
from meshnode.xds.resources import PeerTarget

__all__ = ["HEALTH_WATCH_DELAY", "NodeXds", "start_control_plane"]

#: Seconds after a peer's channel is made before its endpoints' health watches start.
HEALTH_WATCH_DELAY = 1.0


class NodeXds:
    """Owns the node's control plane and the health watches of its peers' endpoints; answers
    PeerChannel's plan and explain calls."""

    def __init__(self, control_plane: XdsControlPlane, options: tuple[tuple[str, Any], ...]) -> None:
        self.control_plane = control_plane
        self._options = options
        self.health = EndpointHealth(control_plane, options)
        self._watching: set[str] = set()  # peers whose endpoints' health is watched
        self._closing = False

    def plan(self, name: str) -> ChannelPlan:
        cp = self.control_plane
        plan = ChannelPlan(key="xds", target=cp.target(name), credentials=cp.channel_credentials(),
                           options=self._options, not_after=None)
        if name not in self._watching:
            # a peer's endpoints are watched once its channel exists, a moment after, so the watches'
            # handshakes do not compete with the channel's first call
            self._watching.add(name)
            asyncio.get_running_loop().call_later(HEALTH_WATCH_DELAY, self._watch, name)
        return plan

    def _watch(self, name: str) -> None:
        peer = self.control_plane.peers.get(name)
        if peer is not None and peer.endpoints is not None and not self._closing:
            self.health.update(name, peer.endpoints)

    def explain(self, name: str, err: grpc.aio.AioRpcError) -> str | None:
        return self.control_plane.explain(name, err)

    def update_identity(self, snapshot: IdentitySnapshot) -> None:
        self.control_plane.update_identity(snapshot)

    def set_endpoints(self, name: str, endpoints: tuple[HostPort, ...]) -> None:
        self.control_plane.set_endpoints(name, endpoints)
        if name in self._watching:
            self.health.update(name, endpoints)

    async def close(self) -> None:
        self._closing = True
        await self.health.close()
        await self.control_plane.close()


async def start_control_plane(
    node_name: str,
    source: SvidSource,
    peers: Mapping[str, PeerConfig],
    options: tuple[tuple[str, Any], ...] = (),
    *,
    endpoints: Mapping[str, tuple[HostPort, ...]] | None = None,
) -> NodeXds:
    """Start the node's control plane for its spiffe-id peers, roots as SPIFFE bundle maps (gRFC A87).

    ``endpoints``: the endpoints meshnode resolved for peers with a resolved
    endpoint list (the others' come from their configuration).

    Raises PeerError on a bootstrap clash or when gRPC does not apply the maps
    (:mod:`meshnode.xds.a87`), ConfigError when GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE
    is set to something other than true.
    """
    cp = XdsControlPlane(node_name, bundle_map=True)
    try:
        cp.update_identity(source.current())
        given = endpoints or {}
        cp.set_peers({name: PeerTarget.of(peer, given.get(name)) for name, peer in peers.items()})
        await cp.start()
    except BaseException:
        await cp.close()
        raise
    return NodeXds(cp, options)
