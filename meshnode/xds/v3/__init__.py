"""The xDS messages meshnode sends and receives, under their Envoy type names.

:mod:`meshnode.xds.v3.envoy_pb2` is generated from ``meshnode/xds/v3/envoy.proto``:
the few Envoy API messages the control plane needs, with Envoy's field
numbers, in meshnode's own protobuf package (so meshnode depends on no copy
of the Envoy API; xds-protos also installs other packages' files). On the
wire only field numbers count; the one place a name travels is an ``Any``'s
type URL, which :func:`pack` sets to the Envoy name gRPC expects.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import any_pb2
from google.protobuf.message import Message

from meshnode.xds.v3 import envoy_pb2

__all__ = ["ENVOY_TYPES", "envoy_pb2", "pack", "type_url", "unpack"]

_PREFIX = "type.googleapis.com/"

#: message class -> its Envoy (or google.rpc) full name
ENVOY_TYPES: dict[type[Message], str] = {
    envoy_pb2.Listener: "envoy.config.listener.v3.Listener",
    envoy_pb2.ApiListener: "envoy.config.listener.v3.ApiListener",
    envoy_pb2.HttpConnectionManager:
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    envoy_pb2.HttpFilter: "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
    envoy_pb2.Router: "envoy.extensions.filters.http.router.v3.Router",
    envoy_pb2.RouteConfiguration: "envoy.config.route.v3.RouteConfiguration",
    envoy_pb2.Cluster: "envoy.config.cluster.v3.Cluster",
    envoy_pb2.ClusterLoadAssignment: "envoy.config.endpoint.v3.ClusterLoadAssignment",
    envoy_pb2.UpstreamTlsContext: "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    envoy_pb2.DiscoveryRequest: "envoy.service.discovery.v3.DiscoveryRequest",
    envoy_pb2.DiscoveryResponse: "envoy.service.discovery.v3.DiscoveryResponse",
    envoy_pb2.Status: "google.rpc.Status",
}


def type_url(message_type: type[Message]) -> str:
    """``type.googleapis.com/<Envoy name>`` of a message class."""
    return _PREFIX + ENVOY_TYPES[message_type]


def pack(message: Message) -> Any:
    """``message`` in a ``google.protobuf.Any`` under its Envoy type URL (deterministic bytes)."""
    return any_pb2.Any(type_url=type_url(type(message)), value=message.SerializeToString(deterministic=True))


def unpack(packed: Any, message_type: type[Message]) -> Any:
    """The ``message_type`` inside ``packed``; ValueError when the type URL names another type."""
    if packed.type_url != type_url(message_type):
        raise ValueError(f"xds: expected {type_url(message_type)}, got {packed.type_url!r}")
    return message_type.FromString(packed.value)
