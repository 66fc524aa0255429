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

The names are imported when first used (PEP 562), so ``import meshnode`` and
the command line (``meshnode --help``, ``meshnode probe``) start without
loading grpc's server, OpenTelemetry or cryptography.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshnode.authz import Authorizer, AuthzInterceptor, NoPeerIdentityError, Policy, peer_id
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
]

#: public name -> the module that defines it
_LAZY = {
    **dict.fromkeys(["Authorizer", "AuthzInterceptor", "NoPeerIdentityError", "Policy", "peer_id"], "meshnode.authz"),
    "PeerChannel": "meshnode.channel",
    **dict.fromkeys(["NodeConfig", "PeerConfig", "load_node_config"], "meshnode.config.node"),
    **dict.fromkeys(
        ["AlreadyStartedError", "ClosedError", "ConfigError", "IdentityError", "IdentityUnavailableError",
         "InvalidIdentityError", "InvalidSpiffeIdError", "LifecycleError", "MeshnodeError", "NotStartedError",
         "PeerError", "PolicyError", "ServeError"],
        "meshnode.errors",
    ),
    **dict.fromkeys(["IdentitySnapshot", "IdentitySource", "StaticSource"], "meshnode.identity"),
    "Node": "meshnode.node",
    **dict.fromkeys(["NodeService", "only"], "meshnode.service"),
    **dict.fromkeys(["SpiffeID", "dns_name_for", "parse_spiffe_id"], "meshnode.spiffeid"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'meshnode' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

