"""The node's tracing interceptors: OpenTelemetry's gRPC instrumentation
plus the identity attributes it lacks.

Server: OTel's aio server interceptor (first in the list). The caller's
SPIFFE ID and the authorization decision are set on its span by the
authorizer, inside the wrapped handler, where the span is current.
Client: OTel's aio client interceptors, then small ones that stamp the
expected peer ID, the peer name, the local ID and the node name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from meshnode.telemetry.attributes import LOCAL_SPIFFE_ID, NODE_NAME, PEER_NAME, PEER_SPIFFE_ID
from meshnode.telemetry.instrumentation import aio_client_interceptors, aio_server_interceptor

if TYPE_CHECKING:
    from meshnode.config.node import PeerConfig
    from meshnode.node import Node

__all__ = ["client_interceptors", "server_interceptors"]


def server_interceptors(node: Node, tracer_provider: Any = None) -> list[grpc.aio.ServerInterceptor]:
    return [aio_server_interceptor(tracer_provider)]


def client_interceptors(node: Node, peer: PeerConfig, tracer_provider: Any = None) -> list[Any]:
    return list(
        aio_client_interceptors(
            tracer_provider,
            attributes={
                PEER_SPIFFE_ID: str(peer.spiffe_id),
                PEER_NAME: peer.name,
                LOCAL_SPIFFE_ID: str(node.spiffe_id),
                NODE_NAME: node.name,
            },
        )
    )
