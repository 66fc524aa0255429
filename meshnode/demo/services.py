"""Echo answers with the identities it verified; Relay forwards along a route."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from meshnode.authz import peer_id
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.errors import PeerError
from meshnode.service import NodeService

__all__ = ["EchoService", "RelayService"]


class EchoService(NodeService, demo_pb2_grpc.EchoServicer):
    """``meshnode.demo.v1.Echo``: says back the text with caller and server IDs."""

    async def Say(self, request: demo_pb2.SayRequest, context: grpc.aio.ServicerContext) -> demo_pb2.SayReply:
        return demo_pb2.SayReply(text=request.text, caller=str(peer_id()), server=str(self.node.spiffe_id))

    async def SayStream(
        self, request: demo_pb2.SayRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[demo_pb2.SayReply]:
        caller, server = str(peer_id()), str(self.node.spiffe_id)
        for word in request.text.split() or [""]:
            yield demo_pb2.SayReply(text=word, caller=caller, server=server)


class RelayService(NodeService, demo_pb2_grpc.RelayServicer):
    """``meshnode.demo.v1.Relay``: append this node's hop, forward to the next peer in ``route``."""

    async def Forward(
        self, request: demo_pb2.ForwardRequest, context: grpc.aio.ServicerContext
    ) -> demo_pb2.ForwardReply:
        hop = demo_pb2.Hop(node=self.node.name, spiffe_id=str(self.node.spiffe_id), caller=str(peer_id()))
        if not request.route:
            return demo_pb2.ForwardReply(hops=[hop])
        next_peer, rest = request.route[0], list(request.route[1:])
        try:
            stub = self.node.stub(next_peer, demo_pb2_grpc.RelayStub)
        except PeerError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"relay: {exc}")
        remaining = context.time_remaining()
        try:
            reply = await stub.Forward(
                demo_pb2.ForwardRequest(text=request.text, route=rest),
                timeout=remaining if remaining is not None else 10.0,
            )
        except grpc.aio.AioRpcError as err:  # pass the downstream status back, saying where it came from
            await context.abort(err.code(), f"relay {self.node.name} -> {next_peer}: {err.details()}")
        return demo_pb2.ForwardReply(hops=[hop, *reply.hops])
