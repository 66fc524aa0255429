"""The node's side of the xDS control plane: channel plans for spiffe-id peers.

A spiffe-id peer gets one ``xds:///<peer>`` channel for good: gRPC's
file_watcher providers re-read the node's SVID and bundles from the control
plane's runtime directory every second, so rotation needs no new channel
(the plan's key never changes). New TLS handshakes use the new files; a
connection keeps the certificates of its handshake, like Envoy's, until the
server's ``max_connection_age`` (meshnode default 10 minutes) makes the
client reconnect.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

from meshnode.channel import ChannelPlan
from meshnode.config.node import PeerConfig
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.identity.source import SvidSource
from meshnode.xds.control_plane import XdsControlPlane

__all__ = ["NodeXds", "start_control_plane"]


class NodeXds:
    """Owns the node's control plane; answers PeerChannel's plan and explain calls."""

    def __init__(self, control_plane: XdsControlPlane, options: tuple[tuple[str, Any], ...]) -> None:
        self.control_plane = control_plane
        self._options = options

    def plan(self, name: str) -> ChannelPlan:
        cp = self.control_plane
        return ChannelPlan(key="xds", target=cp.target(name), credentials=cp.channel_credentials(),
                           options=self._options, not_after=None)

    def explain(self, name: str, err: grpc.aio.AioRpcError) -> str | None:
        return self.control_plane.explain(name, err)

    def update_identity(self, snapshot: IdentitySnapshot) -> None:
        self.control_plane.update_identity(snapshot)

    async def close(self) -> None:
        await self.control_plane.close()


async def start_control_plane(
    node_name: str,
    source: SvidSource,
    peers: Mapping[str, PeerConfig],
    options: tuple[tuple[str, Any], ...] = (),
) -> NodeXds:
    """Start the node's control plane for its spiffe-id peers, roots as SPIFFE bundle maps (gRFC A87).

    Raises PeerError on a bootstrap clash or when gRPC does not apply the maps
    (:mod:`meshnode.xds.a87`), ConfigError when GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE
    is set to something other than true.
    """
    cp = XdsControlPlane(node_name, bundle_map=True)
    try:
        cp.update_identity(source.current())
        cp.set_peers(dict(peers))
        await cp.start()
    except BaseException:
        await cp.close()
        raise
    return NodeXds(cp, options)
