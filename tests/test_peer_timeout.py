"""[peers.NAME] timeout: the deadline of calls that give none; a caller's own deadline wins.

Two real nodes over mTLS in this process (dns mode); the server reports the
deadline it sees (``context.time_remaining()``), so the test reads what the
peer's timeout did on the wire.
"""

from __future__ import annotations

import grpc
import pytest

from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.devagent.ca import DevCA
from meshnode.node import Node
from meshnode.service import NodeService
from meshnode.testing import ManualSource
from tests.support.nodes import node_config, peer

ALPHA = "spiffe://example.org/node/alpha"
BETA = "spiffe://example.org/node/beta"


class Deadline(NodeService, demo_pb2_grpc.EchoServicer):
    """Echo.Say answers with the seconds left before the call's deadline ("none" without one)."""

    async def Say(self, request: demo_pb2.SayRequest, context: grpc.aio.ServicerContext) -> demo_pb2.SayReply:
        left = context.time_remaining()
        return demo_pb2.SayReply(text="none" if left is None else repr(left))


@pytest.mark.parametrize("timeout", [None, 30.0])
async def test_calls_without_a_deadline_get_the_peer_timeout(timeout: float | None) -> None:
    ca = DevCA("example.org")
    extra = {} if timeout is None else {"timeout": timeout}
    async with Node(node_config("beta", allow=[ALPHA]), services=[Deadline()], source=ManualSource(ca, BETA)) as beta:
        cfg = node_config("alpha", peers={"beta": peer(beta.port, BETA, **extra)})
        async with Node(cfg, source=ManualSource(ca, ALPHA)) as alpha:
            stub = alpha.stub("beta", demo_pb2_grpc.EchoStub)
            given = await stub.Say(demo_pb2.SayRequest(text="x"))
            own = await stub.Say(demo_pb2.SayRequest(text="x"), timeout=300)
    if timeout is None:
        assert given.text == "none"  # as before: no deadline unless one is configured
    else:
        assert 0 < float(given.text) <= timeout + 1  # gRPC rounds a deadline up on the wire
    assert 30 + 1 < float(own.text) <= 300 + 1  # the caller's own deadline, not the peer's
