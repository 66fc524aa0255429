"""Echo services whose methods run until they are cancelled: calls that outlive a node's shutdown_grace.

Each method prints ``slow-echo: started`` on stdout when it begins, so a
test driving ``meshnode run`` knows its calls are in flight.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.service import NodeService

STARTED = "slow-echo: started"


class SlowEcho(NodeService, demo_pb2_grpc.EchoServicer):
    """``async def`` methods that wait until they are cancelled."""

    async def Say(self, request: demo_pb2.SayRequest, context: Any) -> demo_pb2.SayReply:
        print(STARTED, flush=True)
        await asyncio.Event().wait()
        return demo_pb2.SayReply(text=request.text)

    async def SayStream(self, request: demo_pb2.SayRequest, context: Any) -> AsyncIterator[demo_pb2.SayReply]:
        print(STARTED, flush=True)
        yield demo_pb2.SayReply(text="first")
        await asyncio.Event().wait()


class StuckEcho(NodeService, demo_pb2_grpc.EchoServicer):
    """A plain ``def`` method that ignores cancellation (a thread cannot be interrupted) for ten minutes."""

    def Say(self, request: demo_pb2.SayRequest, context: Any) -> demo_pb2.SayReply:
        print(STARTED, flush=True)
        threading.Event().wait(600)
        return demo_pb2.SayReply(text=request.text)
