"""The node's side of the xDS control plane: channel plans for spiffe-id peers.

A spiffe-id peer gets an ``xds:///<peer>`` channel. gRPC's file_watcher
providers re-read the node's SVID and bundles from the control plane's
runtime directory (every second), but only new TLS handshakes use them, and
a channel keeps its connection. So when the SVID or the peer's bundle
changes, the node builds a new channel once the files have been re-read
(``settle``), warms it and swaps it in, like a dns-mode channel; the old one
is retired when its calls end.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import grpc

from meshnode.channel import ChannelPlan
from meshnode.config.node import PeerConfig
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.xds.bootstrap import REFRESH_INTERVAL_SECONDS
from meshnode.xds.control_plane import XdsControlPlane

if TYPE_CHECKING:
    from meshnode.node import Node

__all__ = ["NodeXds", "start_control_plane"]


class NodeXds:
    """Owns the node's control plane; answers PeerChannel's plan and explain calls."""

    def __init__(self, control_plane: XdsControlPlane, options: tuple[tuple[str, Any], ...]) -> None:
        self.control_plane = control_plane
        self._options = options

    def plan(self, name: str, snapshot: IdentitySnapshot) -> ChannelPlan:
        cp = self.control_plane
        td = cp.peers[name].trust_domain
        return ChannelPlan(
            key=f"xds:{snapshot.svid_fingerprint}:{snapshot.bundle_fingerprint(td)}",
            target=cp.target(name), credentials=cp.channel_credentials(), options=self._options,
            not_after=snapshot.not_after, settle=REFRESH_INTERVAL_SECONDS + 0.5,
        )

    def explain(self, name: str, err: grpc.aio.AioRpcError) -> str | None:
        return self.control_plane.explain(name, err)

    def update_identity(self, snapshot: IdentitySnapshot) -> None:
        self.control_plane.update_identity(snapshot)

    async def close(self) -> None:
        await self.control_plane.close()


async def start_control_plane(
    node: Node, peers: Mapping[str, PeerConfig], options: tuple[tuple[str, Any], ...] = ()
) -> NodeXds:
    """Start the node's control plane for its spiffe-id peers (raises PeerError on a bootstrap clash)."""
    cp = XdsControlPlane(node.name)
    try:
        cp.update_identity(node.source.current())
        cp.set_peers(dict(peers))
        await cp.start()
    except BaseException:
        await cp.close()
        raise
    return NodeXds(cp, options)
