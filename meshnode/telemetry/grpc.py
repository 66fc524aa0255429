"""The node's tracing interceptors: OpenTelemetry's gRPC instrumentation
plus the identity attributes it lacks.

Server: no interceptor; the admitted wrapper makes the server span
(:mod:`meshnode.telemetry.serverspans`) and the authorizer sets the caller's
SPIFFE ID and its decision on it. Client: OTel's aio client interceptors, then small ones that stamp the
expected peer ID, the peer name, the local ID, the node name and the
peer's ``server.address``/``server.port``.
"""

from __future__ import annotations

from typing import Any

from meshnode.spiffeid import SpiffeID
from meshnode.telemetry.attributes import LOCAL_SPIFFE_ID, NODE_NAME, PEER_NAME, PEER_SPIFFE_ID
from meshnode.telemetry.instrumentation import (
    aio_client_interceptors,
    server_address_attributes,
)

__all__ = ["client_interceptors"]


def client_interceptors(
    *,
    local_id: SpiffeID,
    node_name: str,
    peer_id: SpiffeID,
    peer_name: str,
    tracer_provider: Any = None,
    address: str | None = None,
) -> list[Any]:
    """``address``: the peer's ``host:port``, as ``server.address``/``server.port`` on its client spans."""
    return list(
        aio_client_interceptors(
            tracer_provider,
            attributes={
                PEER_SPIFFE_ID: str(peer_id),
                PEER_NAME: peer_name,
                LOCAL_SPIFFE_ID: str(local_id),
                NODE_NAME: node_name,
                **(server_address_attributes(address) if address else {}),
            },
        )
    )
