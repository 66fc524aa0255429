"""meshnode: gRPC mesh nodes with SPIFFE identity-bound channels.

The public API, in the order a user meets it::

    from meshnode import Node, NodeService, only, peer_id, load_node_config

    class Greeter(NodeService, demo_pb2_grpc.EchoServicer):
        allow = ["spiffe://example.org/node/alpha"]         # who may call this service
        async def Say(self, request, context):
            return demo_pb2.SayReply(caller=str(peer_id()))   # the verified caller

    async with Node(load_node_config("node.toml"), services=[Greeter()]) as node:
        await node.wait_closed()

Everything else lives in its own module (``meshnode.authz``,
``meshnode.identity``, ``meshnode.telemetry``, ``meshnode.testing``...).
"""

from meshnode.authz import Authorizer, AuthzInterceptor, NoPeerIdentityError, Policy, peer_id, peer_jwt, peer_mtls_id
from meshnode.channel import PeerChannel
from meshnode.config.node import NodeConfig, PeerConfig, load_node_config
from meshnode.errors import (
    AlreadyStartedError,
    ClosedError,
    ConfigError,
    IdentityError,
    IdentityUnavailableError,
    InvalidIdentityError,
    InvalidSpiffeIdError,
    JwtSvidError,
    LifecycleError,
    MeshnodeError,
    NotStartedError,
    PeerError,
    PolicyError,
    ServeError,
)
from meshnode.identity import IdentitySnapshot, IdentitySource, StaticSource
from meshnode.node import Node
from meshnode.service import NodeService, only
from meshnode.spiffeid import SpiffeID, dns_name_for, parse_spiffe_id

__version__ = "0.1.0"

__all__ = [
    "AlreadyStartedError",
    "Authorizer",
    "AuthzInterceptor",
    "ClosedError",
    "ConfigError",
    "IdentityError",
    "IdentitySnapshot",
    "IdentitySource",
    "IdentityUnavailableError",
    "InvalidIdentityError",
    "InvalidSpiffeIdError",
    "JwtSvidError",
    "LifecycleError",
    "MeshnodeError",
    "NoPeerIdentityError",
    "Node",
    "NodeConfig",
    "NodeService",
    "NotStartedError",
    "PeerChannel",
    "PeerConfig",
    "PeerError",
    "Policy",
    "PolicyError",
    "ServeError",
    "SpiffeID",
    "StaticSource",
    "__version__",
    "dns_name_for",
    "load_node_config",
    "only",
    "parse_spiffe_id",
    "peer_id",
    "peer_jwt",
    "peer_mtls_id",
]
