"""Opening the Node: plain servicers, generic handlers, user interceptors, server options,
client-only nodes, and calling a handler as a peer in a unit test."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from meshnode import AlreadyStartedError, ConfigError, NodeService, NotStartedError
from meshnode.authz import peer_id
from meshnode.config.node import node_config_from_dict
from meshnode.credentials import channel_credentials
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.devagent.ca import DevCA
from meshnode.node import Node
from meshnode.spiffeid import dns_name_for
from meshnode.testing import ManualSource, as_caller, issue_snapshot
from tests.support.nodes import node_config, peer
from tests.support.old_generated import SERVICE as OLD_SERVICE
from tests.support.old_generated import OldGreeterServicer

SERVER = "spiffe://example.org/node/server"
ALPHA = "spiffe://example.org/node/alpha"
GAMMA = "spiffe://example.org/node/gamma"


class PlainEcho(demo_pb2_grpc.EchoServicer):
    """A generated servicer, no NodeService: it gets no self.node, only peer_id()."""

    async def Say(self, request: demo_pb2.SayRequest, context: Any) -> demo_pb2.SayReply:
        return demo_pb2.SayReply(text=request.text, caller=str(peer_id()))


class Recorder(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """A user interceptor that wraps behaviours and records the calls that reach them."""

    def __init__(self) -> None:
        self.reached: list[tuple[str, str]] = []

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        async def recorded(request: Any, context: Any) -> Any:
            self.reached.append((details.method, str(peer_id())))  # the caller is already known here
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            recorded, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


async def say(port: int, ca: DevCA, who: str) -> str:
    creds = channel_credentials(issue_snapshot(ca, who), "example.org")
    options = [("grpc.ssl_target_name_override", dns_name_for(SERVER))]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=options) as channel:
        try:
            reply = await demo_pb2_grpc.EchoStub(channel).Say(demo_pb2.SayRequest(text="hi"), timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        return reply.caller


async def test_user_interceptors_wrap_only_admitted_calls_of_a_plain_servicer() -> None:
    ca = DevCA("example.org")
    recorder = Recorder()
    node = Node(node_config("server", allow=[ALPHA]), services=[PlainEcho()], source=ManualSource(ca, SERVER),
                interceptors=[recorder], options=[("grpc.max_receive_message_length", 1024)])
    async with node:
        assert await say(node.port, ca, ALPHA) == ALPHA
        assert await say(node.port, ca, GAMMA) == "PERMISSION_DENIED"
        # the server option reached grpc: a request over 1 KiB is refused
        creds = channel_credentials(issue_snapshot(ca, ALPHA), "example.org")
        options = [("grpc.ssl_target_name_override", dns_name_for(SERVER))]
        async with grpc.aio.secure_channel(f"127.0.0.1:{node.port}", creds, options=options) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as big:
                await demo_pb2_grpc.EchoStub(channel).Say(demo_pb2.SayRequest(text="x" * 4096), timeout=10)
            assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert recorder.reached == [("/meshnode.demo.v1.Echo/Say", ALPHA)]


async def test_a_client_only_node_opens_no_port_and_calls_its_peers_in_production() -> None:
    ca = DevCA("example.org")
    async with Node(node_config("server", allow=[ALPHA]), services=[PlainEcho()],
                    source=ManualSource(ca, SERVER)) as server:
        config = node_config_from_dict({
            "node": {"name": "alpha", "mode": "production"},  # no listen
            "identity": {"source": "workload-api", "trust_domain": "example.org"},
            "peers": {"server": peer(server.port, SERVER)},
        }, environ={})
        assert config.listen is None
        async with Node(config, source=ManualSource(ca, ALPHA)) as client:
            assert client.port == 0 and client.address is None and client.authorizer is None
            reply = await client.stub("server", demo_pb2_grpc.EchoStub).Say(demo_pb2.SayRequest(text="hi"))
            assert reply.caller == ALPHA


async def test_lifecycle_misuse_has_its_own_errors() -> None:
    ca = DevCA("example.org")
    node = Node(node_config("server", allow=[ALPHA]), source=ManualSource(ca, SERVER))
    with pytest.raises(NotStartedError, match="not started"):
        node.channel("x")
    with pytest.raises(NotStartedError):
        _ = node.spiffe_id
    async with node:
        with pytest.raises(AlreadyStartedError, match="start\\(\\) called twice"):
            await node.start()


async def test_as_caller_lets_a_unit_test_call_a_handler_as_a_peer() -> None:
    with as_caller(ALPHA) as who:
        reply = await PlainEcho().Say(demo_pb2.SayRequest(text="hi"), context=None)
    assert str(who) == ALPHA and reply.caller == ALPHA
    with pytest.raises(LookupError):
        peer_id()


class OldGreeter(OldGreeterServicer):
    def Hello(self, request: bytes, context: Any) -> bytes:
        return str(peer_id()).encode()


class GuardedOldGreeter(NodeService, OldGreeter):
    allow = [ALPHA]


async def test_a_servicer_registered_only_through_a_generic_handler_is_served_and_authorized() -> None:
    ca = DevCA("example.org")
    async with Node(node_config("server", allow=[ALPHA]), services=[OldGreeter()],
                    source=ManualSource(ca, SERVER)) as node:
        options = [("grpc.ssl_target_name_override", dns_name_for(SERVER))]
        outcomes = {}
        for who in (ALPHA, GAMMA):
            creds = channel_credentials(issue_snapshot(ca, who), "example.org")
            async with grpc.aio.secure_channel(f"127.0.0.1:{node.port}", creds, options=options) as channel:
                try:
                    outcomes[who] = (await channel.unary_unary(f"/{OLD_SERVICE}/Hello")(b"", timeout=10)).decode()
                except grpc.aio.AioRpcError as exc:
                    outcomes[who] = exc.code().name
    assert outcomes == {ALPHA: ALPHA, GAMMA: "PERMISSION_DENIED"}


async def test_class_rules_on_a_servicer_whose_methods_cannot_be_listed_are_refused() -> None:
    """Its allow list could not be applied to methods meshnode cannot see: fail closed, at start."""
    node = Node(node_config("server", allow=[ALPHA, GAMMA]), services=[GuardedOldGreeter()],
                source=ManualSource(DevCA("example.org"), SERVER))
    with pytest.raises(ConfigError, match="cannot apply its class 'allow' or @only rules"):
        await node.start()
